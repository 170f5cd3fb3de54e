package retry_test

import (
	"sync"
	"time"

	"github.com/activekit/activekit/retry"
)

// fakeClock is a retry.Clock for tests. In auto mode a new timer moves the
// clock forward by its duration and fires at once, so a retry loop runs
// synchronously without sleeping; otherwise timers fire only when Advance
// passes them. Every timer's duration is recorded, and each new timer is
// announced on created.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	auto    bool
	delays  []time.Duration
	timers  []*fakeTimer
	created chan time.Duration
}

var _ retry.Clock = (*fakeClock)(nil)

func newAutoClock() *fakeClock {
	return &fakeClock{now: time.Now(), auto: true, created: make(chan time.Duration, 1024)}
}

func newManualClock() *fakeClock {
	return &fakeClock{now: time.Now(), created: make(chan time.Duration, 1024)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) retry.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), ch: make(chan time.Time, 1)}
	c.delays = append(c.delays, d)
	if c.auto {
		c.now = t.at
		t.ch <- c.now
	} else {
		c.timers = append(c.timers, t)
	}
	select {
	case c.created <- d:
	default: // nobody is listening (auto mode in a benchmark)
	}
	return t
}

// Advance moves the clock forward and fires the timers that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(c.now) {
			t.ch <- c.now
		} else {
			kept = append(kept, t)
		}
	}
	c.timers = kept
}

func (c *fakeClock) Delays() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.delays...)
}

type fakeTimer struct {
	c  *fakeClock
	at time.Time
	ch chan time.Time
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	for i, x := range t.c.timers {
		if x == t {
			t.c.timers = append(t.c.timers[:i], t.c.timers[i+1:]...)
			return true
		}
	}
	return false
}
