// Package memcachedstore is the session store on Memcached, merging deltas
// under gets/cas.
//
// Status: being built.
package memcachedstore
