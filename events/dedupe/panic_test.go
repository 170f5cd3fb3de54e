package dedupe_test

import (
	"context"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/internal/testenv"
)

// TestMiddlewarePanicReleases: a handler that panics under the Middleware
// left its claim held, since run released only on an error; a subscriber
// that recovers the panic around the whole chain (the Kafka subscriber does)
// then dead-letters or redelivers an event that every instance finds busy
// for a whole lease. The claim is now released and the panic goes on.
func TestMiddlewarePanicReleases(t *testing.T) {
	s, _ := redisStore(t, testenv.Redis(t))
	mw, err := dedupe.Middleware(s, dedupe.Config{Group: "g", Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	e := events.New("/t", "t", nil)
	h := mw(func(context.Context, events.Event) error { panic("boom") })
	func() {
		defer func() {
			if v := recover(); v != "boom" {
				t.Fatalf("recovered %v, want the handler's panic", v)
			}
		}()
		_ = h(context.Background(), e)
	}()
	c, err := s.Claim(context.Background(), "g", e.ID, time.Minute)
	if err != nil || c.Status != dedupe.Claimed {
		t.Fatalf("Claim after the handler panicked: %+v, %v; want claimed at once", c, err)
	}
}
