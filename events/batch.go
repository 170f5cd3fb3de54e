package events

import "context"

// BatchMiddleware is the batch form of a Middleware, for subscribers that
// hand over events in ordered batches (the Kafka subscriber: one partition's
// records of one poll). It lets the middleware do once per batch what it
// would otherwise do once per event, such as claiming every event's ID in one
// round trip to a dedupe store before the first handler runs, and recording
// them all as done in one round trip before the subscriber acknowledges them.
//
// A subscriber that supports it takes it as a configuration option (it
// cannot be found on a Handler, which is a function); other subscribers use
// the per-event Middleware the same package provides.
//
// Begin is called with the events the subscriber is about to hand to the
// handler, in that order, before any of them is handled. When it returns an
// error nothing was handled, and the subscriber calls it again later (the
// Kafka subscriber retries it until it succeeds or ctx ends).
type BatchMiddleware interface {
	Begin(ctx context.Context, es []Event) (Batch, error)
}

// Batch is the state of one batch begun by a BatchMiddleware. A subscriber
// uses it from one goroutine at a time.
//
// Handle runs es[i] through next (the handler, or what wraps it), or does
// not when the middleware knows the effect is done, and returns nil when the
// effect is done. The subscriber calls it for i in increasing order, and
// again for the same i for each retry of a failed attempt; after a failure
// it may move on to i+1 (the event was dead-lettered) or stop. An error
// marked Unavailable (see Unavailable) keeps the Subscriber rule: Handle is
// called again for the same i until it clears or ctx ends, and the event is
// not dead-lettered for it.
//
// End is called once the subscriber stops handling the batch, having handled
// all of it or stopped early (ctx ended), and before it acknowledges any of
// its events. It finishes what Handle left to do (records the handled events
// as done) and releases what was prepared for events never handled. It
// returns nil when every event whose Handle returned nil may be
// acknowledged. On an error the subscriber acknowledges none of the batch
// and may call End again, so End must be safe to repeat. End should finish
// even when ctx has ended (bounded by a timeout of its own): the effects it
// records have happened.
type Batch interface {
	Handle(ctx context.Context, i int, next Handler) error
	End(ctx context.Context) error
}
