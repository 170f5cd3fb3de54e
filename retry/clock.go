package retry

import "time"

// Clock is the source of time for a Retrier or a Budget. Tests inject a fake
// one so that they never sleep; production code leaves it unset and gets the
// system clock.
//
// Implementations must be safe for concurrent use.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTimer returns a started timer that delivers on its channel once d
	// has passed.
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer a retry loop uses.
type Timer interface {
	// C returns the channel the timer delivers on.
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it stopped
	// the timer before it fired.
	Stop() bool
}

// systemClock is the Clock backed by package time.
type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) NewTimer(d time.Duration) Timer { return systemTimer{time.NewTimer(d)} }

type systemTimer struct{ t *time.Timer }

func (t systemTimer) C() <-chan time.Time { return t.t.C }
func (t systemTimer) Stop() bool          { return t.t.Stop() }
