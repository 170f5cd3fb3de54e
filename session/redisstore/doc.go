// Package redisstore is the session store on Redis (standalone, Sentinel or
// Cluster) through go-redis: one hash per session, one round trip per read
// and per write.
//
// Status: being built.
package redisstore
