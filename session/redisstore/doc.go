// Package redisstore is the session store on Redis (standalone, Sentinel or
// Cluster) through go-redis: one hash per session, one round trip per read
// and per write in the common case.
//
// In an active-active fleet a user's consecutive requests land on different
// instances, sometimes at the same moment. A store that reads a whole session
// and writes it back loses one of two concurrent updates. This store keeps a
// session as a Redis hash with a field per key, and applies a change as a
// Lua script that refuses to resurrect a destroyed session, checks expected
// per-key versions (compare-and-set), sets and deletes only the changed
// fields, bumps the version, keeps the total size of the values in the hash
// (so the session size limit is enforced by the same script, without reading
// the session first) and moves the expiry: two instances changing different
// keys never conflict, and a compare-and-set on one key is exact. A read is
// one round trip of plain commands, no script (Redis 7 and later): PEXPIRE
// ... GT moves the idle deadline on Redis's clock, HGETALL reads the hash,
// PEXPIRETIME the deadline, and, for a user's session, HGETALL the user's
// revocation epoch; the checks (alias, absolute deadline, epoch) run in Go.
// Within a second of its last refresh of a session (WithIdleResolution) a
// Store reads the hashes alone, so a burst of requests for one session moves
// its idle deadline once per instance.
// A second trip caps the deadline in a session's last idle period, and puts
// back the expiry of an alias a read went through. Servers before Redis 7.0
// get a short load script instead, found out from their first error reply.
//
// Every key of one session, and of one user's index and revocation epoch,
// carries the same hash tag, so every script touches one Cluster slot:
// session IDs of a logged-in user carry the user's tag (session.NewToken).
// Token rotation copies a session to a new ID (possibly another slot) and
// turns the old one into a short-lived alias guarded by the version read, so
// no write made meanwhile is lost.
//
// Redis replicates asynchronously: a write acknowledged by a primary that
// then fails over may be lost. WithWait(n, timeout) makes each write wait for
// n replicas (WAIT, pipelined with the write; the timeout must be shorter
// than the client's ReadTimeout). For the same reason reads go
// to primaries only: New refuses a Cluster client that reads from replicas.
//
// A write script is never sent twice by the client: go-redis resends a
// command whose reply a dropped connection lost, and a script run twice
// would answer from its own first run (a conflict for a change it applied).
// Such a write fails with the connection's error instead, its outcome
// unknown, and the Manager answers the request with its error handler.
package redisstore
