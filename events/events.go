package events

import (
	"context"
	"errors"
)

var (
	// ErrUncertain reports that Publish cannot tell whether events were
	// published: the context ended, or the connection broke, after they
	// were handed to the broker and before it answered. They may be
	// published or not. Publishing them again is safe (their IDs do not
	// change, and a consumer's dedupe absorbs the copy), and it is what
	// keeps the at-least-once promise.
	ErrUncertain = errors.New("events: publish outcome uncertain")
	// ErrClosed reports a call on a Publisher or Subscriber after Close.
	ErrClosed = errors.New("events: closed")
)

// Publisher publishes events.
//
// Implementations are safe for concurrent use. Publish validates every event
// first and publishes none when one is invalid (an error matching ErrInvalid).
// It returns nil only when the broker has durably accepted every event.
// Otherwise the error matches ErrUncertain when some events may have been
// published (see ErrUncertain), and otherwise says none of the failed events
// was published; either way, publishing the same events again, with the same
// IDs, is the way to recover. Cancelling ctx makes Publish return promptly.
//
// Events with the same Key (the partitionkey extension, else Subject)
// published by one Publish call, or by calls that do not overlap in time, are
// delivered in that order by adapters that order per key. Implementations
// retry transient broker errors themselves, within ctx.
//
// Close flushes what is in flight, releases the connections the Publisher
// owns and makes later calls fail with ErrClosed.
type Publisher interface {
	Publish(ctx context.Context, events ...Event) error
	Close() error
}

// Subscriber delivers the events of a topic to a Handler.
//
// Subscribe blocks until ctx ends, then returns nil, or returns early with an
// error when it cannot go on (a configuration error, ErrClosed). Delivery is
// at least once: an event whose handler did not return nil, or whose instance
// died before it recorded that, is delivered again, possibly to another
// instance of the same consumer group. Use the dedupe package for an
// exactly-once effect.
//
// The handler's ctx ends when Subscribe's ctx ends; an event whose handler
// returns then is not acknowledged and is delivered again later. Handlers
// for different keys may run concurrently; events with the same key are
// handled one at a time, in order, by adapters that order per key.
//
// Who retries a handler error is the adapter's documented policy (the Kafka
// adapter retries in place, keeping order, and then dead-letters). Handlers
// return an error wrapped by Permanent to skip those retries.
//
// Every implementation keeps one rule for an error marked Unavailable (a
// dependency such as the dedupe store is down; see Unavailable): it is
// retried, with backoff, until it clears or ctx ends; it never dead-letters
// the event and never counts as an attempt of the event, even when it is
// also Permanent. An adapter that cannot retry in place leaves the event
// unacknowledged, to be delivered again.
//
// Implementations are safe for concurrent use: several Subscribe calls may
// run at once, each its own consumer.
type Subscriber interface {
	Subscribe(ctx context.Context, topic string, h Handler) error
}

// Handler handles one event. It returns nil when the event's effect is done;
// an error makes the event be delivered again or dead-lettered, according to
// the subscriber and the middleware, except that an error marked Unavailable
// is retried until it clears and never dead-lettered. It must return
// promptly once ctx ends.
type Handler func(ctx context.Context, e Event) error

// Middleware wraps a Handler with more behaviour.
type Middleware func(Handler) Handler

// Chain wraps h in mws, the first the outermost: Chain(h, a, b) calls a, which
// calls b, which calls h.
func Chain(h Handler, mws ...Middleware) Handler {
	for i := len(mws) - 1; i >= 0; i-- {
		h = mws[i](h)
	}
	return h
}
