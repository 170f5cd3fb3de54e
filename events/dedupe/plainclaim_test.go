package dedupe_test

import (
	"context"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/internal/testenv"
)

// cancellingStore is a plain Store (no BatchStore) that ends ctx as the
// claim of one ID starts, as a subscriber stopping mid-Begin would.
type cancellingStore struct {
	dedupe.Store
	at     string
	cancel context.CancelFunc
}

func (s cancellingStore) Claim(ctx context.Context, g, id string, l time.Duration) (dedupe.Claim, error) {
	if id == s.at {
		s.cancel()
	}
	return s.Store.Claim(ctx, g, id, l)
}

// TestBatchPlainStoreClaimCancelled: Begin on a plain Store claims one
// event at a time and, when a claim fails, gives back those it took. It gave
// them back with the caller's ctx, which had ended when that was why the
// claim failed (the subscriber stopping, a rebalance), so the claims stayed
// and the next owner of the partition found those events busy for a whole
// lease. The release now outlives ctx, bounded as RedisStore's is.
func TestBatchPlainStoreClaimCancelled(t *testing.T) {
	rs, _ := redisStore(t, testenv.Redis(t))
	es := []events.Event{events.New("/t", "t", nil), events.New("/t", "t", nil)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := dedupe.New(cancellingStore{Store: rs, at: dedupe.Key(es[1]), cancel: cancel}, dedupe.Config{Group: "g", Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Begin(ctx, es); err == nil {
		t.Fatal("Begin with ctx ending mid-claim succeeded")
	}
	c, err := rs.Claim(context.Background(), "g", dedupe.Key(es[0]), time.Minute)
	if err != nil || c.Status != dedupe.Claimed {
		t.Fatalf("Claim after a Begin that failed: %+v, %v; want claimed at once", c, err)
	}
}
