package session_test

import (
	"testing"
	"time"

	"github.com/activekit/activekit/session"
)

// TestMixedIdleTimeouts: two instances with different idle timeouts (as
// during a rollout that changes it) share a session. A write on the
// instance with the shorter timeout does not move the idle deadline set by
// the other back, as a read there never did: before, the session ended
// after the shorter timeout although the longer one had not passed.
func TestMixedIdleTimeouts(t *testing.T) {
	store, clock := newMem(t)
	long := newManager(t, store, session.WithIdleTimeout(time.Hour)).Middleware(app(t))
	short := newManager(t, store, session.WithIdleTimeout(10*time.Minute)).Middleware(app(t))
	c := &client{h: long}
	c.do(t, "GET", "/put?a=1")
	c.h = short
	c.do(t, "GET", "/get?k=a")
	c.do(t, "GET", "/put?b=2")
	c.do(t, "GET", "/inc?k=n")
	clock.Advance(11 * time.Minute)
	c.h = long
	if got := body(c.do(t, "GET", "/get?k=b")); got != "true:2" {
		t.Fatalf("11 minutes after a write on the 10-minute instance, within the 1-hour idle timeout of the last write before: %q", got)
	}
	clock.Advance(61 * time.Minute) // past the longest idle timeout
	if got := body(c.do(t, "GET", "/get?k=b")); got != "false:" {
		t.Fatalf("after the longest idle timeout: %q, want the session gone", got)
	}
}
