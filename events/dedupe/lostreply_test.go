package dedupe_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/internal/testenv"
)

// TestRedisDoneWithLostReply: a DoneWith whose reply is lost to a dropped
// connection is not answered by a second run of its script (go-redis's
// default retries resend a command whose reply was lost), which finds the
// first run's done mark and answers ErrLeaseLost, "having run nothing",
// for an effect that was recorded, its commands' replies unset. The handler
// then fails an event whose effect happened (dead-lettered by an
// events.DeadLetter without retries). The outcome of a lost reply is
// unknown, and DoneWith says so with an Unavailable error.
func TestRedisDoneWithLostReply(t *testing.T) {
	c, lose := testenv.LossyRedis(t)
	s, prefix := redisStore(t, c)
	ctx := context.Background()
	counter := prefix + "counter"
	effect := func(ctx context.Context, p redis.Pipeliner) error {
		p.Incr(ctx, counter)
		return nil
	}
	// Once with the reply delivered, so that the reply lost is the
	// script's own, not a NOSCRIPT.
	warm, err := s.Claim(ctx, "g", "warm", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DoneWith(ctx, warm, effect); err != nil {
		t.Fatal(err)
	}
	cl, err := s.Claim(ctx, "g", "id", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	lose.Store(true)
	err = s.DoneWith(ctx, cl, effect)
	if lose.Swap(false) {
		t.Fatal("no reply was lost")
	}
	n, gerr := c.Get(ctx, counter).Int()
	if gerr != nil {
		t.Fatal(gerr)
	}
	if errors.Is(err, dedupe.ErrLeaseLost) && n == 2 {
		t.Fatalf("DoneWith answered %v, yet ran the effect and marked the event done", err)
	}
	if err != nil && !errors.Is(err, dedupe.ErrLeaseLost) && !events.IsUnavailable(err) {
		t.Fatalf("DoneWith after a lost reply: %v, want an Unavailable error", err)
	}
	if err == nil && n != 2 {
		t.Fatalf("DoneWith answered success, yet the effect did not run (counter %d)", n)
	}
}
