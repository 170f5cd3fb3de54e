package dedupe_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/activekit/activekit/events/dedupe"
)

// TestStoreDoneAfterLeaseEnded: a claim whose lease ended is no longer
// held, whether or not another claimer has taken the event since, so Done
// with it returns ErrLeaseLost and records nothing: the event can be claimed
// again (as the Deduper does, to record an effect that ran). Every store
// answers alike; a MongoStore used to mark such a claim done and return nil.
// Done of a claim already done (a retry after a lost reply) is no error.
func TestStoreDoneAfterLeaseEnded(t *testing.T) {
	for name, f := range stores {
		t.Run(name, func(t *testing.T) {
			s, expire := f(t)
			ctx := context.Background()
			old, err := s.Claim(ctx, "g", "e", 50*time.Millisecond)
			if err != nil || old.Status != dedupe.Claimed {
				t.Fatalf("Claim: %+v, %v", old, err)
			}
			expire() // the lease ends; nobody takes the event over
			if err := s.Done(ctx, old); !errors.Is(err, dedupe.ErrLeaseLost) {
				t.Fatalf("Done after the lease ended: %v, want ErrLeaseLost", err)
			}
			again, err := s.Claim(ctx, "g", "e", time.Minute)
			if err != nil || again.Status != dedupe.Claimed {
				t.Fatalf("Claim after a Done that lost its lease: %+v, %v; want Claimed (the lost Done recorded nothing)", again, err)
			}
			if err := s.Done(ctx, again); err != nil {
				t.Fatalf("Done of a held claim: %v", err)
			}
			if err := s.Done(ctx, again); err != nil {
				t.Fatalf("Done again of a claim done: %v, want nil", err)
			}
			if d, err := s.Claim(ctx, "g", "e", time.Minute); err != nil || d.Status != dedupe.Done {
				t.Fatalf("Claim after Done: %+v, %v", d, err)
			}
		})
	}
}
