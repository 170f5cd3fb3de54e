// Package events publishes events and applies their effects in a fleet of
// identical instances, any of which can die between any two steps.
//
// # Why it exists
//
// In an active-active service the instance that changes state, the instance
// that publishes the event and the instance that consumes it are any of N
// processes, and each can be killed at any moment: after a write but before
// the broker's acknowledgement, after a consumer's effect but before its
// offset commit. No protocol makes "exactly once" hold across those gaps on
// its own. What can be promised, and what this package and its adapters
// promise, is:
//
//   - an event is published at least once, with a stable ID: Publish returns
//     nil only once the broker has durably accepted it, reports an uncertain
//     outcome as ErrUncertain (never as a plain failure), and publishing the
//     same event again keeps its ID;
//   - a consumer's effect happens exactly once: the subscriber acknowledges
//     an event only after its handler succeeded (so delivery is at least once),
//     and the dedupe middleware (package events/dedupe) claims the event's ID
//     before the handler and records it as done after, so a redelivery is
//     absorbed.
//
// # The pieces
//
// Event is a CloudEvents 1.0 envelope (Validate applies the specification's
// rules; New assigns a time-sortable UUIDv7 ID). Publisher and Subscriber are
// the two interfaces every adapter implements (events/kafka today; IBM MQ and
// a MongoDB outbox relay fit the same shape), and events/eventstest is the
// conformance suite they all pass. Handler is a function; Middleware wraps
// one: Retry (in place, through package retry), DeadLetter, Recover, Tracing
// (continuing the producer's trace from the traceparent extension), and
// dedupe.Middleware. A BatchMiddleware does per batch what a Middleware does
// per event, for subscribers that hand over ordered batches; the dedupe
// package's Deduper is one, and saves a round trip to its store per event.
//
// # Failures
//
// A handler error is the event's failure: it is retried in place a bounded
// number of times and then dead-lettered, so one bad event cannot block its
// partition forever. An error marked Unavailable is a dependency's failure
// instead (the dedupe store marks every error of its own so): nothing is
// wrong with the event, so it is retried until the dependency is back and is
// never dead-lettered. An outage thus delays a partition's events rather than
// sending them all to the dead-letter topic.
//
// Core events imports no vendor client: adapters live in subpackages, so a
// service that uses Kafka does not compile IBM MQ.
package events
