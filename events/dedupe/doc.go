// Package dedupe records processed events so that at-least-once delivery
// gives an exactly-once effect.
//
// # Why it exists
//
// A fleet of consumers cannot avoid redelivery: an instance that dies after a
// handler's effect and before its offset commit, a rebalance that moves a
// partition mid-batch, or a publisher that retries after an uncertain outcome
// all make the same event (the same source and ID) arrive twice, possibly at
// two instances at once. The effect must still happen once.
//
// A Store arbitrates, shared by every instance: the Middleware claims
// (group, event key) before the handler runs, where the key is the event's
// source and ID together (Key; CloudEvents makes only the pair unique, so
// two sources may number their events alike; Config.Key changes it), with a lease so that the claim
// of an instance that died expires and another can take over; marks it done
// after the handler succeeds; and releases it when the handler fails, so a
// redelivery runs at once. A second delivery of a done event is skipped; one
// that arrives while another instance holds the claim waits for it.
//
// That gives exactly one effect when the effect is idempotent per event ID
// (an upsert keyed by it), or when it is recorded in the store in the same
// atomic step as the done mark (RedisStore.DoneWith, one Lua script that
// checks the claim, runs the effect's commands and marks it done).
// Otherwise one gap remains, and no store can close it: an instance dying
// between its effect and the done mark leaves the effect to run again once
// the lease ends.
//
// # Per event or per batch
//
// Middleware costs two round trips to the store per event (claim, then
// done), one event at a time on each partition. A subscriber that hands over
// ordered batches (the Kafka subscriber's SubscriberConfig.Batch) can take a
// Deduper (New) instead, an events.BatchMiddleware: it claims all of a
// batch's events in one round trip before the first handler runs, runs the
// handler on each claimed event in order (skipping done ones, waiting for
// busy ones through the per-event path), and records all that succeeded as
// done in one round trip before the subscriber commits. A failed attempt
// releases its claim, so retries and dead-lettering behave as with
// Middleware; a batch that stops early releases the claims it did not run.
// The guarantee is the same; the one difference is that an instance dying
// mid-batch leaves effects unrecorded since the start of the batch rather
// than since the last event, which DoneWith or an idempotent effect closes,
// as before. See Deduper.Begin for the details.
//
// # When the store fails
//
// The store is a dependency of every event, so its outage must not be
// mistaken for the events' failure. Every store error the Middleware or the
// batch path returns (a claim, a done mark or a release that failed after
// Config.Retry's retries) is marked events.Unavailable, keeping its chain.
// A subscriber that keeps the events.Subscriber rule (the Kafka subscriber
// does) retries such an event in place until the store is back, without
// counting those tries as the event's attempts, and never dead-letters it
// for that; events.DeadLetter returns it instead of dead-lettering it. A
// Redis failover or a minute's outage thus delays the events that arrive
// meanwhile, in order, instead of sending them to the dead-letter topic.
// ErrLeaseLost and ErrConfig are not marked. A handler's own error is not
// marked either, except when the release that follows it fails too: then
// the store is down, the handler's failure may be its consequence (as when
// DoneWith could not reach it), and the event is judged again once the store
// is back.
//
// On the per-event path, an effect whose done mark failed (the store went
// down between the effect and Done) runs again when the event is retried,
// once its claim's lease has ended: the same gap as an instance dying before
// Done, closed the same way (DoneWith, which records the effect with the
// mark, or an effect idempotent per event ID). The batch path keeps such an
// event pending and records it when a later Handle or End reaches the store,
// so its effect runs again only if another claimer took the event over
// after the lease ended.
//
// RedisStore needs one round trip per claim (a Lua script) and is a
// BatchStore: a batch's claims, done marks or releases take one script call
// on standalone and Sentinel, one pipeline on Cluster or Ring. It keeps a
// group's records as fields of a few hashes per generation rather than a
// key per event, which makes a batch a handful of commands over many fields;
// see RedisStore for the layout and its memory. Since a claim is such a
// record too, its lease may be at most the store's Retention. MongoStore
// relies on the unique _id and conditional updates, and is a BatchStore too:
// a batch's claims are one insert of many documents (plus a find of those
// already known), its done marks a find and one update of many.
package dedupe
