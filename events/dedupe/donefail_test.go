package dedupe_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/retry"
)

// TestDoneFailureThenRedelivery: the handler's effect happened, then the
// store went down before Done could record it; the Middleware answers
// Unavailable and the subscriber delivers the event again, in place, once
// the store is back (as the Kafka subscriber does). The effect must not run
// a second time: the redelivery finds the event held by the very claim whose
// Done failed, and must finish it rather than wait for that claim's lease to
// end and run the handler again. Per event and through the batch path's
// per-event fallback (an event whose first try failed).
func TestDoneFailureThenRedelivery(t *testing.T) {
	for _, path := range []string{"middleware", "batch"} {
		t.Run(path, func(t *testing.T) {
			c := testenv.Redis(t)
			rs, _ := redisStore(t, c)
			s := &downStore{s: rs}
			d, err := dedupe.New(s, dedupe.Config{Group: "g", Lease: 300 * time.Millisecond, MaxWait: 20 * time.Millisecond,
				Retry: retry.Policy{MaxAttempts: 2, InitialInterval: time.Millisecond}})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			e := events.New("/t", "t", nil)
			var runs atomic.Int32
			tries := 0
			h := func(context.Context, events.Event) error {
				tries++
				if path == "batch" && tries == 1 {
					return errDown // the first try fails on its own
				}
				if runs.Add(1) == 1 {
					s.down.Store(true) // the store goes down after the effect
				}
				return nil
			}
			deliver := func() error { return d.Middleware()(h)(ctx, e) }
			if path == "batch" {
				b, err := d.Begin(ctx, []events.Event{e})
				if err != nil {
					t.Fatal(err)
				}
				if err := b.Handle(ctx, 0, h); err == nil {
					t.Fatal("the first try's failure was not returned")
				}
				deliver = func() error { return b.Handle(ctx, 0, h) }
				defer func() {
					if err := b.End(ctx); err != nil {
						t.Errorf("End: %v", err)
					}
				}()
			}
			err = deliver()
			if !events.IsUnavailable(err) {
				t.Fatalf("Done failed, yet err %v is not Unavailable", err)
			}
			s.down.Store(false)
			// The subscriber retries in place until the error clears.
			for err = deliver(); events.IsUnavailable(err); err = deliver() {
				time.Sleep(10 * time.Millisecond)
			}
			if err != nil {
				t.Fatal(err)
			}
			if n := runs.Load(); n != 1 {
				t.Fatalf("the effect ran %d times, want 1", n)
			}
			if cl, err := rs.Claim(ctx, "g", dedupe.Key(e), time.Second); err != nil || cl.Status != dedupe.Done {
				t.Fatalf("after the redelivery the event is %v (%v), want done", cl.Status, err)
			}
		})
	}
}
