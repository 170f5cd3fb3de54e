package events_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
)

// TestRetryHandlerTimeout: a handler whose own call timed out failed, like
// any transient failure, while its caller goes on: Retry tries it again
// instead of taking the wrapped context.DeadlineExceeded for the caller
// giving up (and a DeadLetter outside it dead-lettering it at once). When
// the caller's ctx ended, it stops.
func TestRetryHandlerTimeout(t *testing.T) {
	calls := 0
	h := events.Retry(retrier(t, 3))(func(ctx context.Context, e events.Event) error {
		calls++
		if calls == 1 {
			cctx, cancel := context.WithTimeout(ctx, time.Millisecond)
			defer cancel()
			<-cctx.Done()
			return fmt.Errorf("calling the downstream service: %w", cctx.Err())
		}
		return nil
	})
	if err := h(context.Background(), valid()); err != nil || calls != 2 {
		t.Fatalf("a handler's own timeout: %d calls, err %v; want it retried", calls, err)
	}
	calls = 0
	ctx, cancel := context.WithCancel(context.Background())
	h = events.Retry(retrier(t, 3))(func(ctx context.Context, e events.Event) error {
		calls++
		cancel()
		return ctx.Err()
	})
	if err := h(ctx, valid()); !errors.Is(err, context.Canceled) || calls != 1 {
		t.Fatalf("the caller's ctx ended: %d calls, err %v; want 1 call and its error", calls, err)
	}
}
