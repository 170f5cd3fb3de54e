package discovery

import (
	"context"
	"time"
)

// Registry makes an instance known to the fleet.
//
// Implementations must be safe for concurrent use. Register validates the
// instance (Instance.Validate) before any I/O, and ctx bounds only the
// initial registration: the heartbeat that follows belongs to the returned
// Registration, not to ctx.
type Registry interface {
	// Register announces inst and starts whatever keeps it announced (a
	// heartbeat). The instance stays registered, and healthy unless the
	// registry sees otherwise, until the Registration is closed.
	Register(ctx context.Context, inst Instance) (Registration, error)
}

// Registration is one registered instance. It owns the heartbeat that keeps
// the instance healthy in the registry: its goroutine is started by
// Register and stopped by Close.
//
// Implementations must be safe for concurrent use.
type Registration interface {
	// Instance returns the instance as registered.
	Instance() Instance
	// Close stops the heartbeat and deregisters the instance, so that
	// watchers stop routing to it. ctx bounds the deregistration: when
	// it ends first, Close returns its error, the heartbeat is stopped
	// all the same, and the registry removes the instance on its own
	// when its health check lapses. Calling Close again returns nil.
	Close(ctx context.Context) error
}

// Drainer is implemented by a Registration that can take itself out of
// rotation while still running: a draining instance is reported unhealthy
// at once, so watchers drop it, while it finishes the requests it already
// has. It is the first step of a graceful shutdown (see package health).
// The heartbeat keeps running but no longer reports the instance healthy.
type Drainer interface {
	Drain(ctx context.Context, reason string) error
}

// Resolver finds the healthy instances of a service and follows them as they
// change.
//
// Implementations must be safe for concurrent use; each Watch call is an
// independent watch.
type Resolver interface {
	// Watch calls fn with every change to the healthy instances of
	// service, until ctx ends, and then returns ctx's error. It runs on
	// the caller's goroutine and starts none of its own that outlive it.
	//
	// The first call to fn comes as soon as the resolver knows the list,
	// even when it is empty. Every later call carries the full list, never
	// a delta, and an empty list is delivered like any other: it means
	// the service has no healthy instance. When the resolver cannot reach
	// its registry it keeps the last list it knew and may call fn with
	// that list and Update.Err set, so that the caller can tell how old
	// its view is; an error never empties the list. fn is never called
	// concurrently and must return promptly.
	//
	// Watch returns a non-context error only when the watch cannot start
	// (such as an invalid service name).
	Watch(ctx context.Context, service string, fn func(Update)) error
}

// Update is one delivery of a Resolver watch.
type Update struct {
	// Service is the watched service.
	Service string
	// Instances is the full list of healthy instances, in a stable order
	// (by ID). It is empty when the service has none. The slice belongs
	// to the receiver.
	Instances []Instance
	// Fetched is when the registry last confirmed Instances.
	Fetched time.Time
	// Err, when set, is why the resolver could not refresh the list:
	// Instances is then the last known good list, as of Fetched.
	Err error
}

// Leader elects one instance of a fleet to do singleton work (a scheduler,
// a relay that must not run twice).
//
// Implementations must be safe for concurrent use.
type Leader interface {
	// Lead waits until this caller holds leadership, then calls fn with
	// a context that is cancelled the moment leadership is lost, and a
	// fencing token. When fn returns, leadership is released.
	//
	// The token is larger than the token of every earlier term of this
	// election: pass it to the shared systems fn writes to, so that they
	// can refuse a write from a leader that has already been replaced but
	// does not know it yet.
	//
	// fn's context ends with cause ErrLeadershipLost (see
	// context.Cause) when leadership is lost, or with ctx's error when
	// ctx ends. Lead returns fn's error, joined with ErrLeadershipLost if
	// leadership was lost while fn ran; ctx's error if ctx ended before
	// leadership was won; or an error from the election itself. To keep
	// campaigning after a loss, call Lead again in a loop.
	Lead(ctx context.Context, fn func(ctx context.Context, token uint64) error) error
}
