package health

import (
	"context"
	"time"
)

// Clock is the source of time for check timeouts, result caching and the
// lifecycle's drain delay and deadlines. Tests inject a fake one to step
// time without sleeping; the default is the system clock.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// AfterFunc calls f in its own goroutine (or, for a fake clock, from
	// the goroutine that advances time) once d has elapsed, unless the
	// returned Timer is stopped first.
	AfterFunc(d time.Duration, f func()) Timer
}

// timeoutContext returns a context that ends d from now on clock. It always
// carries a real deadline, so that code which reads ctx.Deadline (network
// clients setting socket deadlines) stops in time. With the system clock
// that deadline ends it (Err is context.DeadlineExceeded); with any other
// clock it is cancelled when that clock reaches d (Err is context.Canceled,
// Cause is context.DeadlineExceeded).
func timeoutContext(parent context.Context, clock Clock, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(parent, d)
	if _, ok := clock.(systemClock); ok {
		return ctx, cancel
	}
	ctx, cancelCause := context.WithCancelCause(ctx)
	timer := clock.AfterFunc(d, func() { cancelCause(context.DeadlineExceeded) })
	return ctx, func() {
		timer.Stop()
		cancelCause(context.Canceled)
		cancel()
	}
}

// Timer is a pending call scheduled by Clock.AfterFunc.
type Timer interface {
	// Stop prevents the call if it has not happened yet, and reports
	// whether it did so.
	Stop() bool
}

// systemClock is the real clock.
type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }
