// Package consistency makes MongoDB writes survive a failover and makes the
// next read, on any instance of the fleet, see them.
//
// # Why it exists
//
// In an active-active fleet a user's write is acknowledged by one instance
// and their next request is served by another, which may read from a
// secondary, maybe just after the primary failed over. Three things go wrong
// with MongoDB's defaults there: a write acknowledged by the primary alone
// (w=1) is rolled back when that primary fails before replicating it; a read
// on another instance, from a secondary or at read concern local, does not
// see a write that was just acknowledged; and two instances updating the
// same document overwrite each other. This package makes the right settings
// the easy ones and carries causality between instances.
//
// # Levels
//
// A Level sets the write concern, read concern and read preference
// together (Collection, Database, WithLevel, ClientOptions):
//
//	level   write concern     read concern  reads from  survives failover  reads own writes        cost
//	Strong  majority, j=true  majority      primary     yes                yes, from any instance  majority round trip per write; all reads on the primary
//	Causal  majority          majority      nearest     yes                yes, in a causal        majority round trip per write; a read on a lagging
//	                                                                       session (Middleware)    member waits for it to catch up
//	Fast    1                 local         nearest     no: may roll back  no                      cheapest; for data that can be lost or recomputed
//
// Linearizable reads are not offered: Strong's majority reads from the
// primary see every write acknowledged before the read started, except
// during the seconds when a deposed primary does not yet know it.
//
// ClientOptions also turns on retryable reads and writes and sets a
// client-side operation timeout; with a timeout (or a context deadline) the
// driver retries a retryable operation across a failover as often as the
// time allows, not just once.
//
// # Causal tokens
//
// A Token is the cluster time and operation time of a causally consistent
// session, signed with HMAC-SHA256 by a TokenCodec (keys with IDs, so keys
// rotate) and bounded in age. The Middleware reads it from the
// Activekit-Causal-Token request header, starts a session advanced to it and
// puts it in the request context, and writes the session's new position to
// the response header; Transport, on the calling side, sends the latest
// token back on the next request. A missing, forged or expired token is
// ignored and counted: it never fails a request and is never trusted. On a
// server without cluster times (a standalone mongod, FerretDB) no token is
// issued.
//
// # Writes that are safe to repeat
//
// UpdateIfVersion is compare-and-set on a version field (ErrConflict,
// ErrNotFound). InsertOnce inserts by idempotency key and reports a repeat
// as already done (inside a transaction, which the server aborts at the
// duplicate key, as the error ErrAlreadyDone). Transactor runs a function in a transaction with a
// bounded retry policy (the retry package) on the driver's
// TransientTransactionError and UnknownTransactionCommitResult labels, and
// says ErrTransactionsUnsupported on a server without transactions.
// IsRetryable, IsAmbiguous and IsDuplicateKey classify driver errors.
//
// # Knowing what the deployment gives
//
// Preflight reports the topology, members, majority, transactions,
// retryable writes, server flavour (MongoDB or FerretDB) and sharding of
// named collections, with Problems in plain words and Report.Supports(level)
// saying whether a level can be had. HealthCheck pings the primary for a
// readiness check.
//
// Nothing in this package starts a goroutine or logs unless given a logger.
package consistency
