// Package dedupe records processed events so that at-least-once delivery
// gives an exactly-once effect.
//
// # Why it exists
//
// A fleet of consumers cannot avoid redelivery: an instance that dies after a
// handler's effect and before its offset commit, a rebalance that moves a
// partition mid-batch, or a publisher that retries after an uncertain outcome
// all make the same event (the same ID) arrive twice, possibly at two
// instances at once. The effect must still happen once.
//
// A Store arbitrates, shared by every instance: the Middleware claims
// (group, event ID) before the handler runs, with a lease so that the claim
// of an instance that died expires and another can take over; marks it done
// after the handler succeeds; and releases it when the handler fails, so a
// redelivery runs at once. A second delivery of a done event is skipped; one
// that arrives while another instance holds the claim waits for it.
//
// That gives exactly one effect when the effect is idempotent per event ID
// (an upsert keyed by it), or when it is recorded in the store in the same
// atomic step as the done mark (RedisStore.DoneWith, a MULTI/EXEC guarded by
// the claim). Otherwise one gap remains, and no store can close it: an
// instance dying between its effect and the done mark leaves the effect to
// run again once the lease ends.
//
// RedisStore needs one round trip per claim (a Lua script) and pipelines a
// batch of claims into one (ClaimBatch); it works on standalone, Sentinel and
// Cluster. MongoStore relies on the unique _id and conditional updates.
package dedupe
