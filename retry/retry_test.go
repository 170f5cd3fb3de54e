package retry_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/activekit/activekit/retry"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var errTransient = errors.New("transient")

// failing returns a function that fails n times with err, then succeeds,
// and a pointer to its call count.
func failing(n int, err error) (func(context.Context) error, *int) {
	calls := 0
	return func(context.Context) error {
		calls++
		if calls <= n {
			return err
		}
		return nil
	}, &calls
}

func newRetrier(t *testing.T, p retry.Policy, opts ...retry.Option) (*retry.Retrier, *fakeClock) {
	t.Helper()
	clock := newAutoClock()
	r, err := retry.New(p, append([]retry.Option{retry.WithClock(clock)}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r, clock
}

func mustRetryError(t *testing.T, err error) *retry.Error {
	t.Helper()
	var re *retry.Error
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T) is not a *retry.Error", err, err)
	}
	return re
}

func TestDoSucceedsFirstTime(t *testing.T) {
	fn, calls := failing(0, nil)
	if err := retry.Do(context.Background(), retry.Policy{}, fn); err != nil {
		t.Fatalf("Do: %v", err)
	}
	if *calls != 1 {
		t.Fatalf("calls = %d, want 1", *calls)
	}
}

func TestDoRetriesUntilSuccess(t *testing.T) {
	// The package-level Do uses the real clock: keep its delays tiny.
	fn, calls := failing(2, errTransient)
	p := retry.Policy{InitialInterval: time.Microsecond, Jitter: retry.NoJitter}
	if err := retry.Do(context.Background(), p, fn); err != nil {
		t.Fatalf("Do: %v", err)
	}
	if *calls != 3 {
		t.Fatalf("calls = %d, want 3", *calls)
	}
}

func TestRetrierDelaysAndCap(t *testing.T) {
	r, clock := newRetrier(t, retry.Policy{
		InitialInterval: 100 * time.Millisecond,
		MaxInterval:     500 * time.Millisecond,
		MaxAttempts:     8,
		MaxElapsedTime:  -1,
		Jitter:          retry.NoJitter,
	})
	fn, calls := failing(100, errTransient)
	err := r.Do(context.Background(), fn)
	re := mustRetryError(t, err)
	if re.Attempts != 8 || *calls != 8 {
		t.Fatalf("attempts = %d, calls = %d, want 8", re.Attempts, *calls)
	}
	if !errors.Is(err, retry.ErrMaxAttempts) || !errors.Is(err, errTransient) {
		t.Fatalf("err = %v, want ErrMaxAttempts and errTransient", err)
	}
	ms := time.Millisecond
	want := []time.Duration{100 * ms, 200 * ms, 400 * ms, 500 * ms, 500 * ms, 500 * ms, 500 * ms}
	if got := clock.Delays(); !slices.Equal(got, want) {
		t.Fatalf("delays = %v, want %v", got, want)
	}
}

func TestDefaultMaxAttempts(t *testing.T) {
	r, _ := newRetrier(t, retry.Policy{})
	fn, calls := failing(100, errTransient)
	re := mustRetryError(t, r.Do(context.Background(), fn))
	if re.Attempts != retry.DefaultMaxAttempts || *calls != retry.DefaultMaxAttempts {
		t.Fatalf("attempts = %d, calls = %d, want %d", re.Attempts, *calls, retry.DefaultMaxAttempts)
	}
}

// exponential returns the un-jittered delay before retry k (from 0).
func exponential(p retry.Policy, k int) time.Duration {
	d := float64(p.InitialInterval) * math.Pow(p.Multiplier, float64(k))
	return time.Duration(min(d, float64(p.MaxInterval)))
}

func TestJitterBounds(t *testing.T) {
	const runs, attempts = 400, 8
	for _, j := range []retry.Jitter{retry.FullJitter, retry.EqualJitter, retry.DecorrelatedJitter} {
		t.Run(j.String(), func(t *testing.T) {
			p := retry.Policy{
				InitialInterval: 100 * time.Millisecond,
				MaxInterval:     2 * time.Second,
				MaxAttempts:     attempts,
				MaxElapsedTime:  -1,
				Jitter:          j,
			}
			// Over all runs, the smallest and largest share of its
			// range that the first delay took: the jitter must use
			// the whole range, not just stay inside it.
			lowest, highest := 1.0, 0.0
			for range runs {
				r, clock := newRetrier(t, p)
				fn, _ := failing(100, errTransient)
				_ = r.Do(context.Background(), fn)
				delays := clock.Delays()
				if len(delays) != attempts-1 {
					t.Fatalf("%d delays, want %d", len(delays), attempts-1)
				}
				prev := p.InitialInterval
				for k, d := range delays {
					var lo, hi time.Duration
					switch j {
					case retry.FullJitter:
						lo, hi = 0, exponential(r.Policy(), k)
					case retry.EqualJitter:
						hi = exponential(r.Policy(), k)
						lo = hi / 2
					case retry.DecorrelatedJitter:
						lo, hi = p.InitialInterval, min(p.MaxInterval, 3*prev)
					}
					if d < lo || d > hi {
						t.Fatalf("delay %d = %v, outside [%v, %v]", k, d, lo, hi)
					}
					if k == 0 && hi > lo {
						share := float64(d-lo) / float64(hi-lo)
						lowest, highest = min(lowest, share), max(highest, share)
					}
					prev = d
				}
			}
			if lowest > 0.05 || highest < 0.95 {
				t.Fatalf("first delays cover [%.2f, %.2f] of their range, want about [0, 1]", lowest, highest)
			}
		})
	}
}

func TestMaxElapsedTime(t *testing.T) {
	clock := newAutoClock()
	r, err := retry.New(retry.Policy{
		InitialInterval: time.Second,
		MaxAttempts:     -1,
		MaxElapsedTime:  4 * time.Second,
		Jitter:          retry.NoJitter,
	}, retry.WithClock(clock))
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	// Each attempt takes 1s, and the elapsed time counts from the first
	// failure. Attempt 1 fails at 0s and waits 1s; attempt 2 fails at 2s
	// and waits 2s (to 4s: allowed); attempt 3 fails at 5s and its 4s
	// delay would end at 9s, past 4s.
	err = r.Do(context.Background(), func(context.Context) error {
		calls++
		clock.Advance(time.Second)
		return errTransient
	})
	re := mustRetryError(t, err)
	if re.Attempts != 3 || calls != 3 {
		t.Fatalf("attempts = %d, calls = %d, want 3", re.Attempts, calls)
	}
	if !errors.Is(err, retry.ErrMaxElapsed) || !errors.Is(err, errTransient) {
		t.Fatalf("err = %v, want ErrMaxElapsed joined with errTransient", err)
	}
}

func TestRetryAfterIsFloor(t *testing.T) {
	p := retry.Policy{InitialInterval: time.Second, MaxAttempts: 2, Jitter: retry.NoJitter}
	for _, tc := range []struct {
		name string
		hint time.Duration
		want time.Duration
	}{
		{"hint above policy", 5 * time.Second, 5 * time.Second},
		{"hint below policy", 10 * time.Millisecond, time.Second},
		{"negative hint", -time.Hour, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, clock := newRetrier(t, p)
			fn, calls := failing(1, retry.After(tc.hint, errTransient))
			if err := r.Do(context.Background(), fn); err != nil {
				t.Fatalf("Do: %v", err)
			}
			if *calls != 2 {
				t.Fatalf("calls = %d, want 2", *calls)
			}
			if got := clock.Delays(); !slices.Equal(got, []time.Duration{tc.want}) {
				t.Fatalf("delays = %v, want [%v]", got, tc.want)
			}
		})
	}
}

func TestRetryAfterDoesNotBypassLimits(t *testing.T) {
	t.Run("elapsed", func(t *testing.T) {
		r, clock := newRetrier(t, retry.Policy{MaxElapsedTime: time.Minute})
		fn, calls := failing(100, retry.After(2*time.Minute, errTransient))
		err := r.Do(context.Background(), fn)
		if !errors.Is(err, retry.ErrMaxElapsed) || *calls != 1 || len(clock.Delays()) != 0 {
			t.Fatalf("err = %v, calls = %d, delays = %v; want ErrMaxElapsed after 1 call, no wait", err, *calls, clock.Delays())
		}
	})
	t.Run("deadline", func(t *testing.T) {
		r, clock := newRetrier(t, retry.Policy{MaxElapsedTime: -1})
		ctx, cancel := context.WithDeadline(context.Background(), clock.Now().Add(time.Hour))
		defer cancel()
		fn, calls := failing(100, retry.After(2*time.Hour, errTransient))
		err := r.Do(ctx, fn)
		if !errors.Is(err, retry.ErrDeadline) || *calls != 1 || len(clock.Delays()) != 0 {
			t.Fatalf("err = %v, calls = %d, delays = %v; want ErrDeadline after 1 call, no wait", err, *calls, clock.Delays())
		}
	})
}

func TestDeadlineRule(t *testing.T) {
	r, clock := newRetrier(t, retry.Policy{
		InitialInterval: 20 * time.Minute,
		MaxInterval:     time.Hour,
		MaxAttempts:     -1,
		MaxElapsedTime:  -1,
		Jitter:          retry.NoJitter,
	})
	// The deadline is an hour away on the fake clock (and in real time,
	// so the context itself does not expire during the test).
	ctx, cancel := context.WithDeadline(context.Background(), clock.Now().Add(time.Hour))
	defer cancel()
	fn, calls := failing(100, errTransient)
	// Attempt 1 at 0, wait 20m, attempt 2 at 20m; the next wait (40m)
	// would end at the deadline, so it is not scheduled.
	err := r.Do(ctx, fn)
	re := mustRetryError(t, err)
	if re.Attempts != 2 || *calls != 2 {
		t.Fatalf("attempts = %d, calls = %d, want 2", re.Attempts, *calls)
	}
	if !errors.Is(err, retry.ErrDeadline) || !errors.Is(err, errTransient) {
		t.Fatalf("err = %v, want ErrDeadline joined with errTransient", err)
	}
	if got := clock.Delays(); !slices.Equal(got, []time.Duration{20 * time.Minute}) {
		t.Fatalf("delays = %v, want [20m]", got)
	}
}

func TestCancelDuringWait(t *testing.T) {
	p := retry.Policy{InitialInterval: time.Hour, MaxElapsedTime: -1, Jitter: retry.NoJitter}
	for _, pkgLevel := range []bool{false, true} {
		t.Run(fmt.Sprintf("package-level=%v", pkgLevel), func(t *testing.T) {
			clock := newManualClock()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ran := make(chan struct{}, 100)
			calls := 0
			fn := func(context.Context) error {
				calls++
				ran <- struct{}{}
				return errTransient
			}
			done := make(chan error, 1)
			if pkgLevel {
				// The real clock with an hour's wait: only cancellation
				// can end it.
				go func() { done <- retry.Do(ctx, p, fn) }()
				<-ran
			} else {
				r, err := retry.New(p, retry.WithClock(clock))
				if err != nil {
					t.Fatal(err)
				}
				go func() { done <- r.Do(ctx, fn) }()
				select {
				case d := <-clock.created:
					if d != time.Hour {
						t.Fatalf("waiting %v, want 1h", d)
					}
				case err := <-done:
					t.Fatalf("Do returned %v before waiting", err)
				}
			}
			cancel()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Do did not return after the context was cancelled")
			}
			re := mustRetryError(t, err)
			if !errors.Is(err, context.Canceled) || !errors.Is(err, errTransient) {
				t.Fatalf("err = %v, want context.Canceled joined with errTransient", err)
			}
			if re.Attempts != 1 || calls != 1 {
				t.Fatalf("attempts = %d, calls = %d, want 1", re.Attempts, calls)
			}
		})
	}
}

func TestExpiredContextRunsNothing(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b, err := retry.NewBudget(retry.BudgetConfig{Ratio: 1, MinPerSecond: -1})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := newRetrier(t, retry.Policy{}, retry.WithBudget(b))
	for name, do := range map[string]func(func(context.Context) error) error{
		"Do":         func(fn func(context.Context) error) error { return retry.Do(ctx, retry.Policy{}, fn) },
		"Retrier.Do": func(fn func(context.Context) error) error { return r.Do(ctx, fn) },
	} {
		t.Run(name, func(t *testing.T) {
			fn, calls := failing(0, nil)
			err := do(fn)
			re := mustRetryError(t, err)
			if *calls != 0 || re.Attempts != 0 {
				t.Fatalf("calls = %d, attempts = %d, want 0", *calls, re.Attempts)
			}
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v, want context.Canceled", err)
			}
		})
	}
	// No call ran, so nothing was deposited.
	if n := b.Available(); n != 0 {
		t.Fatalf("budget available = %d after no calls, want 0", n)
	}
}

func TestPermanentStops(t *testing.T) {
	r, clock := newRetrier(t, retry.Policy{Retryable: func(error) bool { return true }})
	fn, calls := failing(100, retry.Permanent(io.ErrUnexpectedEOF))
	err := r.Do(context.Background(), fn)
	re := mustRetryError(t, err)
	if *calls != 1 || re.Attempts != 1 || len(clock.Delays()) != 0 {
		t.Fatalf("calls = %d, attempts = %d, delays = %v; want one call and no wait", *calls, re.Attempts, clock.Delays())
	}
	if re.Stop != nil || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err = %v (stop %v), want io.ErrUnexpectedEOF and no stop reason", err, re.Stop)
	}
	if retry.Permanent(nil) != nil || retry.After(time.Second, nil) != nil {
		t.Fatal("Permanent(nil) and After(d, nil) must be nil")
	}
}

func TestClassifier(t *testing.T) {
	errFatal := errors.New("fatal")
	notFatal := func(err error) bool { return !errors.Is(err, errFatal) }
	for _, tc := range []struct {
		name      string
		retryable func(error) bool
		err       error
		wantCalls int
	}{
		{"custom says stop", notFatal, errFatal, 1},
		{"custom says retry", notFatal, errTransient, 3},
		// The caller's ctx lives on: the attempt's own timeout passed.
		{"default retries attempt deadline", nil, fmt.Errorf("query: %w", context.DeadlineExceeded), 3},
		{"default retries inner cancel", nil, context.Canceled, 3},
		{"permanent attempt deadline", nil, retry.Permanent(context.DeadlineExceeded), 1},
		{"custom may retry attempt deadline", notFatal, context.DeadlineExceeded, 3},
		{"default retries others", nil, errTransient, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := newRetrier(t, retry.Policy{MaxAttempts: 3, Retryable: tc.retryable})
			fn, calls := failing(100, tc.err)
			err := r.Do(context.Background(), fn)
			if *calls != tc.wantCalls {
				t.Fatalf("calls = %d, want %d", *calls, tc.wantCalls)
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want it to match %v", err, tc.err)
			}
		})
	}
}

// TestCallerContextStops: an attempt that fails because the caller's ctx
// ended stops the loop, although IsRetryable takes a context error for a
// transient one: Do asks the caller's ctx first.
func TestCallerContextStops(t *testing.T) {
	for _, cause := range []error{context.Canceled, context.DeadlineExceeded} {
		r, clock := newRetrier(t, retry.Policy{MaxAttempts: 5})
		ctx, cancel := context.WithCancelCause(context.Background())
		calls := 0
		err := r.Do(ctx, func(ctx context.Context) error {
			calls++
			cancel(cause)
			return fmt.Errorf("query: %w", cause)
		})
		var re *retry.Error
		if !errors.As(err, &re) || calls != 1 || re.Attempts != 1 || !errors.Is(re.Stop, context.Canceled) || len(clock.Delays()) != 0 {
			t.Fatalf("%v: calls = %d, err = %v; want one call stopped by the caller's ctx", cause, calls, err)
		}
	}
}

func TestIsRetryable(t *testing.T) {
	nested := &retry.Error{Attempts: 3, Err: errTransient, Stop: retry.ErrMaxAttempts}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errTransient, true},
		{retry.After(time.Second, errTransient), true},
		{retry.Permanent(errTransient), false},
		{fmt.Errorf("wrapped: %w", retry.Permanent(errTransient)), false},
		{context.Canceled, true},
		{fmt.Errorf("op: %w", context.DeadlineExceeded), true},
		{retry.Permanent(context.DeadlineExceeded), false},
		{nested, false},
		{fmt.Errorf("outer: %w", nested), false},
	} {
		if got := retry.IsRetryable(tc.err); got != tc.want {
			t.Errorf("IsRetryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestRetriesHappenAtOneLayer(t *testing.T) {
	inner, _ := newRetrier(t, retry.Policy{MaxAttempts: 3})
	outer, _ := newRetrier(t, retry.Policy{MaxAttempts: 3})
	fn, calls := failing(100, errTransient)
	err := outer.Do(context.Background(), func(ctx context.Context) error { return inner.Do(ctx, fn) })
	if *calls != 3 {
		t.Fatalf("calls = %d, want 3 (outer must not retry the inner loop's final error)", *calls)
	}
	if !errors.Is(err, errTransient) || !errors.Is(err, retry.ErrMaxAttempts) {
		t.Fatalf("err = %v", err)
	}
}

func TestErrorFormatAndUnwrap(t *testing.T) {
	for _, tc := range []struct {
		err  *retry.Error
		want string
	}{
		{&retry.Error{Attempts: 3, Err: errTransient, Stop: retry.ErrBudgetExhausted}, "retry: 3 attempts, retry budget exhausted: transient"},
		{&retry.Error{Attempts: 1, Err: errTransient}, "retry: 1 attempt: transient"},
		{&retry.Error{Stop: context.Canceled}, "retry: 0 attempts, context canceled"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
	var target *retry.Error
	wrapped := fmt.Errorf("get user: %w", &retry.Error{Attempts: 2, Err: &myErr{code: 7}, Stop: retry.ErrDeadline})
	if !errors.As(wrapped, &target) || target.Attempts != 2 {
		t.Fatalf("errors.As *Error on %v failed", wrapped)
	}
	var me *myErr
	if !errors.As(wrapped, &me) || me.code != 7 {
		t.Fatal("errors.As does not reach the last attempt's typed error")
	}
	if !errors.Is(wrapped, retry.ErrDeadline) {
		t.Fatal("errors.Is does not reach the stop reason")
	}
}

type myErr struct{ code int }

func (e *myErr) Error() string { return fmt.Sprintf("code %d", e.code) }

func TestPolicyValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    retry.Policy
	}{
		{"negative initial", retry.Policy{InitialInterval: -1}},
		{"negative max interval", retry.Policy{MaxInterval: -1}},
		{"multiplier below 1", retry.Policy{Multiplier: 0.5}},
		{"negative multiplier", retry.Policy{Multiplier: -2}},
		{"NaN multiplier", retry.Policy{Multiplier: math.NaN()}},
		{"infinite multiplier", retry.Policy{Multiplier: math.Inf(1)}},
		{"max below initial", retry.Policy{InitialInterval: time.Second, MaxInterval: time.Millisecond}},
		{"unknown jitter", retry.Policy{Jitter: 42}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.p.Validate(); !errors.Is(err, retry.ErrInvalidPolicy) {
				t.Errorf("Validate = %v, want ErrInvalidPolicy", err)
			}
			if _, err := retry.New(tc.p); !errors.Is(err, retry.ErrInvalidPolicy) {
				t.Errorf("New = %v, want ErrInvalidPolicy", err)
			}
			if _, err := retry.NewBackoff(tc.p, nil); !errors.Is(err, retry.ErrInvalidPolicy) {
				t.Errorf("NewBackoff = %v, want ErrInvalidPolicy", err)
			}
			fn, calls := failing(0, nil)
			if err := retry.Do(context.Background(), tc.p, fn); !errors.Is(err, retry.ErrInvalidPolicy) || *calls != 0 {
				t.Errorf("Do = %v after %d calls, want ErrInvalidPolicy and no call", err, *calls)
			}
		})
	}
	if _, err := retry.New(retry.Policy{}, retry.WithClock(nil)); !errors.Is(err, retry.ErrInvalidPolicy) {
		t.Errorf("WithClock(nil): %v, want ErrInvalidPolicy", err)
	}
	if _, err := retry.New(retry.Policy{}, retry.WithMeterProvider(nil)); !errors.Is(err, retry.ErrInvalidPolicy) {
		t.Errorf("WithMeterProvider(nil): %v, want ErrInvalidPolicy", err)
	}
}

func TestPolicyDefaults(t *testing.T) {
	r, err := retry.New(retry.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	p := r.Policy()
	if p.InitialInterval != 100*time.Millisecond || p.Multiplier != 2 || p.MaxInterval != 10*time.Second ||
		p.MaxAttempts != 4 || p.MaxElapsedTime != 30*time.Second || p.Jitter != retry.FullJitter || p.Retryable == nil {
		t.Fatalf("defaults = %+v", p)
	}
	// A zero MaxInterval never falls below a large InitialInterval.
	r, err = retry.New(retry.Policy{InitialInterval: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Policy().MaxInterval; got != time.Minute {
		t.Fatalf("MaxInterval = %v, want 1m", got)
	}
}

func TestDoValue(t *testing.T) {
	p := retry.Policy{InitialInterval: time.Microsecond, Jitter: retry.NoJitter}
	calls := 0
	v, err := retry.DoValue(context.Background(), p, func(context.Context) (string, error) {
		calls++
		if calls < 2 {
			return "partial", errTransient
		}
		return "ok", nil
	})
	if err != nil || v != "ok" || calls != 2 {
		t.Fatalf("DoValue = %q, %v after %d calls", v, err, calls)
	}
	v, err = retry.DoValue(context.Background(), p, func(context.Context) (string, error) {
		return "partial", retry.Permanent(errTransient)
	})
	if v != "" || !errors.Is(err, errTransient) {
		t.Fatalf("DoValue on failure = %q, %v; want zero value and the error", v, err)
	}

	r, _ := newRetrier(t, retry.Policy{})
	n, err := retry.DoValueWith(context.Background(), r, func(context.Context) (int, error) { return 42, nil })
	if err != nil || n != 42 {
		t.Fatalf("DoValueWith = %d, %v", n, err)
	}
}

func TestOnRetry(t *testing.T) {
	type call struct {
		attempt int
		err     error
		delay   time.Duration
	}
	var got []call
	r, _ := newRetrier(t, retry.Policy{InitialInterval: time.Second, Jitter: retry.NoJitter},
		retry.WithOnRetry(func(attempt int, err error, delay time.Duration) {
			got = append(got, call{attempt, err, delay})
		}))
	fn, _ := failing(2, errTransient)
	if err := r.Do(context.Background(), fn); err != nil {
		t.Fatal(err)
	}
	want := []call{{1, errTransient, time.Second}, {2, errTransient, 2 * time.Second}}
	if !slices.Equal(got, want) {
		t.Fatalf("OnRetry calls = %v, want %v", got, want)
	}
}
