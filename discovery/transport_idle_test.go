package discovery_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/memregistry"
	"github.com/activekit/activekit/retry"
	"go.uber.org/goleak"
)

// timerClock is a retry.Clock whose time and timers the test moves by hand.
type timerClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*clockTimer
	asked  []time.Duration // every NewTimer's d
}

type clockTimer struct {
	clock *timerClock
	at    time.Time
	c     chan time.Time
}

func newTimerClock() *timerClock { return &timerClock{now: time.Unix(1_700_000_000, 0)} }

func (c *timerClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *timerClock) NewTimer(d time.Duration) retry.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	tm := &clockTimer{clock: c, at: c.now.Add(d), c: make(chan time.Time, 1)}
	c.asked = append(c.asked, d)
	c.timers = append(c.timers, tm)
	return tm
}

// Pending returns the number of timers not yet fired or stopped.
func (c *timerClock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// Advance moves the clock by d and fires the timers that are due.
func (c *timerClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, tm := range c.timers {
		if tm.at.After(c.now) {
			kept = append(kept, tm)
			continue
		}
		tm.c <- c.now
	}
	c.timers = kept
}

func (tm *clockTimer) C() <-chan time.Time { return tm.c }

func (tm *clockTimer) Stop() bool {
	c := tm.clock
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, x := range c.timers {
		if x == tm {
			c.timers = append(c.timers[:i], c.timers[i+1:]...)
			return true
		}
	}
	return false
}

// countingResolver counts the watches running.
type countingResolver struct {
	discovery.Resolver
	running atomic.Int64
}

func (r *countingResolver) Watch(ctx context.Context, service string, fn func(discovery.Update)) error {
	r.running.Add(1)
	defer r.running.Add(-1)
	return r.Resolver.Watch(ctx, service, fn)
}

// stubBase answers 200 without a body and without a network, and holds the
// requests whose path is /hold until release is closed.
type stubBase struct{ release chan struct{} }

func (b stubBase) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Path == "/hold" {
		<-b.release
	}
	return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Request: req}, nil
}

// idleFleet registers one instance (never dialled) of each service.
func idleFleet(t *testing.T, services ...string) *countingResolver {
	t.Helper()
	reg := memregistry.New(memregistry.Config{})
	for _, name := range services {
		r, err := reg.Register(context.Background(), discovery.Instance{ID: name + "-1", Service: name, Address: "192.0.2.1", Port: 80})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close(context.Background()) })
	}
	return &countingResolver{Resolver: reg}
}

func roundTrip(t *testing.T, tr http.RoundTripper, url string) error {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	resp, err := tr.RoundTrip(req)
	if err == nil {
		resp.Body.Close()
	}
	return err
}

// TestTransportStopsIdleWatches: the watch of a service that no request has
// used for IdleTimeout is stopped, its goroutine gone, and a later request
// starts it again; a service with a request in progress is kept.
func TestTransportStopsIdleWatches(t *testing.T) {
	res := idleFleet(t, "a", "b", "c")
	clock := newTimerClock()
	before := goleak.IgnoreCurrent()
	base := stubBase{release: make(chan struct{})}
	tr, err := discovery.NewTransport(res, discovery.TransportConfig{Base: base, Clock: clock, IdleTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for _, url := range []string{"http://a/", "http://b/"} {
		if err := roundTrip(t, tr, url); err != nil {
			t.Fatal(err)
		}
	}
	held := make(chan error, 1)
	go func() { held <- roundTrip(t, tr, "http://c/hold") }()
	waitFor(t, func() bool { return res.running.Load() == 3 && tr.Balancer("c") != nil && clock.Pending() == 1 })

	clock.Advance(30 * time.Second)
	waitFor(t, func() bool { return clock.Pending() == 1 }) // checked, none idle for a minute
	if err := roundTrip(t, tr, "http://b/"); err != nil {
		t.Fatal(err)
	}
	clock.Advance(30 * time.Second)
	waitFor(t, func() bool { return res.running.Load() == 2 })
	if tr.Balancer("a") != nil || tr.Balancer("b") == nil || tr.Balancer("c") == nil {
		t.Fatal("want a's watch stopped, b (used 30s ago) and c (a request in progress) kept")
	}

	close(base.release)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return clock.Pending() == 1 })
	clock.Advance(time.Minute)
	waitFor(t, func() bool { return res.running.Load() == 0 })
	if tr.Balancer("b") != nil || tr.Balancer("c") != nil {
		t.Fatal("idle watches of b and c not stopped")
	}
	// Every goroutine the Transport started is gone.
	goleak.VerifyNone(t, before)

	if err := roundTrip(t, tr, "http://a/"); err != nil {
		t.Fatalf("GET after its watch was stopped: %v", err)
	}
	if res.running.Load() != 1 {
		t.Fatalf("%d watches, want a's again", res.running.Load())
	}
}

// TestTransportMaxServices: a Transport watches at most MaxServices
// services; one more fails with ErrTooManyServices, unless an idle one can
// make room.
func TestTransportMaxServices(t *testing.T) {
	res := idleFleet(t, "a", "b", "c")
	clock := newTimerClock()
	tr, err := discovery.NewTransport(res, discovery.TransportConfig{Base: stubBase{}, Clock: clock, MaxServices: 2, IdleTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for _, url := range []string{"http://a/", "http://b/"} {
		if err := roundTrip(t, tr, url); err != nil {
			t.Fatal(err)
		}
	}
	if err := roundTrip(t, tr, "http://c/"); !errors.Is(err, discovery.ErrTooManyServices) {
		t.Fatalf("GET of a third service: %v, want ErrTooManyServices", err)
	}
	if err := roundTrip(t, tr, "http://a/"); err != nil {
		t.Fatalf("GET of a service already watched: %v", err)
	}
	clock.Advance(time.Minute)
	if err := roundTrip(t, tr, "http://c/"); err != nil {
		t.Fatalf("GET of a third service once the others are idle: %v", err)
	}
	waitFor(t, func() bool { return res.running.Load() <= 2 })
}

// TestTransportTinyIdleTimeout: an IdleTimeout of a nanosecond must not
// make the goroutine that looks for idle watches spin on timers of zero.
func TestTransportTinyIdleTimeout(t *testing.T) {
	res := idleFleet(t, "a")
	clock := newTimerClock()
	tr, err := discovery.NewTransport(res, discovery.TransportConfig{Base: stubBase{}, Clock: clock, IdleTimeout: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := roundTrip(t, tr, "http://a/"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return clock.Pending() == 1 })
	clock.mu.Lock()
	d := clock.asked[0]
	clock.mu.Unlock()
	if d < time.Millisecond {
		t.Fatalf("the idle sweep waits %v between looks, want at least 1ms", d)
	}
}
