package retry_test

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/activekit/activekit/retry"
)

// A Retry-After hint so large that elapsed+hint overflows a Duration must
// still be stopped by MaxElapsedTime, not wrap negative and be waited.
func TestHugeHintStillStopsOnElapsed(t *testing.T) {
	r, clock := newRetrier(t, retry.Policy{
		InitialInterval: time.Second,
		MaxAttempts:     5,
		MaxElapsedTime:  time.Minute,
		Jitter:          retry.NoJitter,
	})
	calls := 0
	err := r.Do(context.Background(), func(context.Context) error {
		calls++
		if calls == 1 {
			return errTransient // waits 1s, so some time has elapsed
		}
		return retry.After(time.Duration(math.MaxInt64), errTransient)
	})
	re := mustRetryError(t, err)
	if !errors.Is(err, retry.ErrMaxElapsed) || re.Attempts != 2 || calls != 2 {
		t.Fatalf("err = %v, calls = %d, delays = %v; want ErrMaxElapsed after 2 calls", err, calls, clock.Delays())
	}
	if got := clock.Delays(); len(got) != 1 || got[0] != time.Second {
		t.Fatalf("delays = %v, want [1s]", got)
	}
}

// The same overflow through a Backoff's NextBackOff.
func TestBackoffHugeIntervalStillStopsOnElapsed(t *testing.T) {
	clock := newAutoClock()
	b, err := retry.NewBackoff(retry.Policy{
		InitialInterval: time.Second,
		Multiplier:      1e300,
		MaxInterval:     time.Duration(math.MaxInt64),
		MaxAttempts:     -1,
		MaxElapsedTime:  time.Minute,
		Jitter:          retry.NoJitter,
	}, clock)
	if err != nil {
		t.Fatal(err)
	}
	if d := b.NextBackOff(); d != time.Second {
		t.Fatalf("first delay = %v, want 1s", d)
	}
	clock.Advance(time.Second)
	if d := b.NextBackOff(); d != -1 {
		t.Fatalf("second delay = %v, want backoff.Stop (past MaxElapsedTime)", d)
	}
}

// MaxInterval caps every delay (before jitter), also when it is below the
// default InitialInterval that a zero InitialInterval stands for.
func TestMaxIntervalBelowDefaultInitial(t *testing.T) {
	r, clock := newRetrier(t, retry.Policy{
		MaxInterval: 20 * time.Millisecond,
		MaxAttempts: 4,
		Jitter:      retry.NoJitter,
	})
	fn, _ := failing(100, errTransient)
	_ = r.Do(context.Background(), fn)
	for _, d := range clock.Delays() {
		if d > 20*time.Millisecond {
			t.Fatalf("delays = %v, want each at most MaxInterval 20ms", clock.Delays())
		}
	}
	if p := r.Policy(); p.InitialInterval > p.MaxInterval {
		t.Fatalf("normalized policy has InitialInterval %v above MaxInterval %v", p.InitialInterval, p.MaxInterval)
	}
}

// The one-layer rule is the default classifier's: a Policy.Retryable of
// the caller's own decides about an inner loop's *Error, as the docs say.
func TestCustomClassifierDecidesInnerLoopError(t *testing.T) {
	inner := &retry.Error{Attempts: 3, Err: errTransient, Stop: retry.ErrMaxAttempts}
	for _, tc := range []struct {
		name      string
		retryable func(error) bool
		wantCalls int
	}{
		{"default", nil, 1},
		{"custom calling IsRetryable", func(err error) bool { return retry.IsRetryable(err) }, 1},
		{"custom saying retry", func(error) bool { return true }, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := newRetrier(t, retry.Policy{MaxAttempts: 3, Retryable: tc.retryable})
			fn, calls := failing(100, inner)
			_ = r.Do(context.Background(), fn)
			if *calls != tc.wantCalls {
				t.Fatalf("calls = %d, want %d", *calls, tc.wantCalls)
			}
		})
	}
}

// An attempt that returns after the caller's deadline has passed, before
// the context's own timer has marked it done (ctx.Err() is still nil for a
// moment after the deadline), ends the loop with the context's error, as
// if ctx.Err() had been seen: not with ErrDeadline alone, which a caller
// matching context.DeadlineExceeded would miss. The fake clock stands for
// the moment after the deadline; the context's real deadline is an hour
// away, so its timer has not fired.
func TestDeadlinePassedDuringAttempt(t *testing.T) {
	r, clock := newRetrier(t, retry.Policy{MaxElapsedTime: -1})
	ctx, cancel := context.WithDeadline(context.Background(), clock.Now().Add(time.Hour))
	defer cancel()
	calls := 0
	err := r.Do(ctx, func(context.Context) error {
		calls++
		clock.Advance(time.Hour) // the attempt ends at the deadline
		return errTransient
	})
	re := mustRetryError(t, err)
	if calls != 1 || re.Attempts != 1 || !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, errTransient) {
		t.Fatalf("calls = %d, err = %v; want one call ended by context.DeadlineExceeded, joined with errTransient", calls, err)
	}
}
