package dedupe

// Tests of defects found in the review of the generation layout and the
// Unavailable rule.

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
)

// TestRedisLeaseLongerThanRetention: a claim is a record of a generation,
// read only while that generation or the next is current; a lease longer
// than the retention would be taken over by another claimer while it still
// held. The store refuses such a lease instead.
func TestRedisLeaseLongerThanRetention(t *testing.T) {
	const retention = 100 * time.Millisecond
	s, _ := layoutStore(t, RedisConfig{Retention: retention})
	ctx := context.Background()
	const lease = time.Second
	first, err := s.Claim(ctx, "g", "e", lease)
	if errors.Is(err, ErrConfig) {
		if _, err := New(s, Config{Group: "g", Lease: lease}); !errors.Is(err, ErrConfig) {
			t.Fatalf("New with a Lease over the RedisStore's Retention: %v, want ErrConfig", err)
		}
		return
	}
	if err != nil || first.Status != Claimed {
		t.Fatalf("Claim: %+v, %v", first, err)
	}
	start := time.Now()
	for time.Since(start) < lease/2 {
		c, err := s.Claim(ctx, "g", "e", lease)
		if err != nil {
			t.Fatal(err)
		}
		if c.Status == Claimed {
			t.Fatalf("claimed again %v into a lease of %v (retention %v)", time.Since(start), lease, retention)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// configStore fails every Claim with ErrConfig.
type configStore struct{ Store }

func (configStore) Claim(context.Context, string, string, time.Duration) (Claim, error) {
	return Claim{}, fmt.Errorf("%w: bad", ErrConfig)
}

// TestMiddlewareConfigErrorNotUnavailable: a configuration error is not the
// store being down: waiting does not mend it, so it is not marked
// events.Unavailable (which a subscriber would retry forever).
func TestMiddlewareConfigErrorNotUnavailable(t *testing.T) {
	mw, err := Middleware(configStore{}, Config{Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	err = mw(func(context.Context, events.Event) error { return nil })(context.Background(), events.New("/t", "t", nil))
	if !errors.Is(err, ErrConfig) || events.IsUnavailable(err) {
		t.Fatalf("err %v: want ErrConfig, not Unavailable", err)
	}
}
