// Package memstore is an in-process session store for tests and
// single-instance use.
//
// In an active-active fleet sessions must outlive the instance that served
// them, so production uses session/redisstore or session/memcachedstore; this
// store keeps the same contract (deltas, per-key versions, aliases, a user
// index with revocation epochs) in a map, so that a service's tests exercise
// the exact semantics of the real stores without a server. It starts no
// goroutine: expired records vanish when touched, and DeleteExpired frees
// them all. WithClock injects a clock so tests expire sessions without
// waiting.
package memstore
