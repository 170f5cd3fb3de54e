// Package memcachedstore is the session store on Memcached: one item per
// session, deltas merged under gets/cas.
//
// In an active-active fleet a user's consecutive requests land on different
// instances, sometimes at the same moment, and a store that writes whole
// sessions back loses one of two concurrent updates. Memcached has no
// server-side scripts, so this store reads a session with gets, merges the
// delta (only the changed keys, with per-key versions for compare-and-set),
// and writes it with cas; when another instance wrote in between, the cas
// fails and the store reads and merges again, a bounded number of times
// (WithMaxAttempts). Two instances changing different keys of one session
// therefore never lose each other's changes, and a compare-and-set on one
// key is exact.
//
// The store keeps the whole session.Store contract, with the optional
// session.Aliaser (token rotation with a grace alias) and session.UserIndex
// (log out everywhere, through a per-user revocation epoch). Deadlines are
// kept in the item, to the millisecond, and checked on every read, since
// Memcached's own expiration counts whole seconds; the expiration is set
// just past the earliest deadline so Memcached frees the memory (as a Unix
// time beyond 30 days, as Memcached requires).
//
// Memcached is a cache: it may evict items under memory pressure and loses
// everything on restart. Losing a session logs its user out, which is safe;
// a session whose user item (revocation epoch) was evicted counts as revoked,
// so eviction can never undo a "log out everywhere". Where that is not
// acceptable, use session/redisstore.
package memcachedstore
