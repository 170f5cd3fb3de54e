package events_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/retry"
)

func TestUnavailableComposition(t *testing.T) {
	base := errors.New("redis: connection refused")
	panicked := &events.PanicError{Value: "x"}
	for _, c := range []struct {
		name        string
		err         error
		unavailable bool
	}{
		{"nil", nil, false},
		{"plain", base, false},
		{"permanent", events.Permanent(base), false},
		{"retry permanent", retry.Permanent(base), false},
		{"marked", events.Unavailable(base), true},
		{"marked twice", events.Unavailable(events.Unavailable(base)), true},
		{"wrapped by fmt", fmt.Errorf("dedupe: claim e1: %w", events.Unavailable(base)), true},
		{"permanent outside", events.Permanent(events.Unavailable(base)), true},
		{"permanent inside", events.Unavailable(events.Permanent(panicked)), true},
		{"retry permanent outside", retry.Permanent(events.Unavailable(base)), true},
		{"joined with a handler error", errors.Join(errors.New("handler failed"), events.Unavailable(base)), true},
		{"joined with a permanent error", errors.Join(events.Permanent(panicked), events.Unavailable(base)), true},
		{"in a retry.Error", &retry.Error{Attempts: 3, Err: events.Unavailable(base), Stop: retry.ErrMaxAttempts}, true},
		{"ErrUnavailable itself", events.ErrUnavailable, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := events.IsUnavailable(c.err); got != c.unavailable {
				t.Fatalf("IsUnavailable(%v) = %v, want %v", c.err, got, c.unavailable)
			}
			if c.err == nil || c.err == events.ErrUnavailable {
				return
			}
			if got := errors.Is(c.err, events.ErrUnavailable); got != c.unavailable {
				t.Errorf("errors.Is(err, ErrUnavailable) = %v, want %v", got, c.unavailable)
			}
			// The chain is kept: what was marked is still found.
			if !errors.Is(c.err, base) {
				var pe *events.PanicError
				if !errors.As(c.err, &pe) || pe != panicked {
					t.Errorf("the marked error lost its chain: %v", c.err)
				}
			}
		})
	}
	if events.Unavailable(nil) != nil {
		t.Fatal("Unavailable(nil) is not nil")
	}
	u := events.Unavailable(base)
	if u.Error() != base.Error() {
		t.Errorf("Unavailable changed the message: %q", u.Error())
	}
	if events.Unavailable(u) != u {
		t.Error("marking an Unavailable error again wrapped it again")
	}
	if errors.Unwrap(u) != base {
		t.Error("Unavailable(err) does not unwrap to err")
	}
	if !retry.IsRetryable(u) {
		t.Error("an Unavailable error is not retryable by the retry package")
	}
}

// fastRetrier retries on the system clock with millisecond delays (the
// Unavailable tries wait by its intervals on the system clock).
func fastRetrier(t *testing.T, attempts int, opts ...retry.Option) *retry.Retrier {
	t.Helper()
	r, err := retry.New(retry.Policy{InitialInterval: time.Millisecond, MaxInterval: 2 * time.Millisecond, MaxAttempts: attempts, Jitter: retry.NoJitter}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRetryUnavailableIsNotAnAttempt: a handler whose dependency is down
// for a while, then whose event fails on its own, is retried until the
// dependency is back and then makes its three attempts; the dead letter
// says 3, not 3 plus the tries during the outage.
func TestRetryUnavailableIsNotAnAttempt(t *testing.T) {
	const outage = 20
	calls := 0
	h := func(context.Context, events.Event) error {
		calls++
		if calls <= outage {
			return events.Unavailable(errors.New("store down"))
		}
		return errors.New("bad event")
	}
	dlq := &memPublisher{}
	wrapped := events.Chain(h, events.DeadLetter(dlq), events.Retry(fastRetrier(t, 3)))
	if err := wrapped(context.Background(), valid()); err != nil {
		t.Fatalf("dead-lettered handler returned %v, want nil", err)
	}
	if calls != outage+3 {
		t.Fatalf("handler ran %d times, want %d (the outage's tries, then 3 attempts)", calls, outage+3)
	}
	if len(dlq.got) != 1 {
		t.Fatalf("dead-lettered %d events, want 1", len(dlq.got))
	}
	d := dlq.got[0]
	if a := d.Extension(events.ExtDeadLetterAttempts); a != "3" {
		t.Errorf("dead letter says %s attempts, want 3", a)
	}
	if r := d.Extension(events.ExtDeadLetterReason); !strings.HasSuffix(r, ": bad event") {
		t.Errorf("dead letter reason %q, want the event's own error", r)
	}
}

// TestRetryUnavailableBeatsPermanentAndBudget: an error both Unavailable
// and Permanent is retried until it clears, and a spent retry budget, which
// stops ordinary retries at once, does not stop those tries.
func TestRetryUnavailableBeatsPermanentAndBudget(t *testing.T) {
	budget, err := retry.NewBudget(retry.BudgetConfig{Ratio: -1, MinPerSecond: -1})
	if err != nil {
		t.Fatal(err)
	}
	r := fastRetrier(t, 5, retry.WithBudget(budget))
	calls := 0
	h := events.Retry(r)(func(context.Context, events.Event) error {
		calls++
		if calls < 10 {
			return events.Permanent(events.Unavailable(errors.New("store down")))
		}
		return nil
	})
	if err := h(context.Background(), valid()); err != nil || calls != 10 {
		t.Fatalf("Unavailable and Permanent: %d calls, err %v; want 10 calls and nil", calls, err)
	}
	// The same Retrier's budget refuses an ordinary retry.
	calls = 0
	h = events.Retry(r)(func(context.Context, events.Event) error { calls++; return errors.New("transient") })
	if err := h(context.Background(), valid()); !errors.Is(err, retry.ErrBudgetExhausted) || calls != 1 {
		t.Fatalf("ordinary error with a spent budget: %d calls, err %v; want 1 call and ErrBudgetExhausted", calls, err)
	}
}

// TestRetryUnavailableUntilCtxEnds: an outage that outlasts ctx ends the
// retries when ctx ends, with an error that is still Unavailable, so a
// DeadLetter outside does not dead-letter the event.
func TestRetryUnavailableUntilCtxEnds(t *testing.T) {
	calls := 0
	h := func(context.Context, events.Event) error {
		calls++
		return events.Unavailable(errors.New("store down"))
	}
	dlq := &memPublisher{}
	wrapped := events.Chain(h, events.DeadLetter(dlq), events.Retry(fastRetrier(t, 3)))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := wrapped(ctx, valid())
	if !events.IsUnavailable(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Retry when ctx ended during an outage: %v, want Unavailable and the ctx error", err)
	}
	if time.Since(start) < 90*time.Millisecond || calls <= 3 {
		t.Fatalf("gave up after %v and %d calls, before ctx ended", time.Since(start), calls)
	}
	if len(dlq.got) != 0 {
		t.Fatalf("dead-lettered %d events during an outage", len(dlq.got))
	}
}

// TestDeadLetterReturnsUnavailable: DeadLetter on its own (a subscriber's
// own retries inside it) returns an Unavailable error instead of
// dead-lettering, whatever else the error says, with ctx alive.
func TestDeadLetterReturnsUnavailable(t *testing.T) {
	for name, herr := range map[string]error{
		"unavailable":                events.Unavailable(errors.New("store down")),
		"unavailable and permanent":  events.Permanent(events.Unavailable(errors.New("store down"))),
		"handler error with release": errors.Join(errors.New("handler failed"), events.Unavailable(errors.New("release: store down"))),
		"after a retry loop":         &retry.Error{Attempts: 4, Err: events.Unavailable(errors.New("store down")), Stop: retry.ErrMaxAttempts},
	} {
		t.Run(name, func(t *testing.T) {
			dlq := &memPublisher{}
			h := events.DeadLetter(dlq)(func(context.Context, events.Event) error { return herr })
			if err := h(context.Background(), valid()); err != herr {
				t.Fatalf("DeadLetter returned %v, want the handler's error", err)
			}
			if len(dlq.got) != 0 {
				t.Fatalf("dead-lettered %d events", len(dlq.got))
			}
		})
	}
	// An ordinary error still is dead-lettered.
	dlq := &memPublisher{}
	h := events.DeadLetter(dlq)(func(context.Context, events.Event) error { return errors.New("bad event") })
	if err := h(context.Background(), valid()); err != nil || len(dlq.got) != 1 {
		t.Fatalf("ordinary error: %v, %d dead letters; want nil and 1", err, len(dlq.got))
	}
}
