package retry

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Do calls fn until it succeeds or p says to stop, waiting between attempts
// as p says, and returns nil or an *Error.
//
// An invalid policy is reported (wrapping ErrInvalidPolicy) before anything
// runs. A context that has already ended runs nothing. Cancelling ctx while
// Do waits between attempts returns at once, with the context's error
// joined to the last attempt's error, and so does an attempt that fails
// once ctx has ended or its deadline has passed (context.DeadlineExceeded,
// even if ctx's timer has not yet marked it done). A retry whose delay would
// end at or after ctx's deadline is not scheduled: Do returns at once with
// ErrDeadline. fn receives ctx and must return promptly when it ends.
//
// Do uses the system clock and no budget, hooks or metrics; a client that
// wants those, as every client of a shared backend should, makes a Retrier
// with New and calls its Do.
func Do(ctx context.Context, p Policy, fn func(context.Context) error) error {
	if !p.valid() {
		return p.Validate()
	}
	if err := ctx.Err(); err != nil {
		return &Error{Stop: err}
	}
	err := fn(ctx)
	if err == nil {
		return nil
	}
	return doRetries(ctx, p, fn, err)
}

// doRetries is Do's slow path, kept apart so that Do stays small.
//
//go:noinline
func doRetries(ctx context.Context, p Policy, fn func(context.Context) error, err error) error {
	np, perr := p.normalize()
	if perr != nil {
		return perr // unreachable: Do checked p.valid
	}
	r := Retrier{policy: np, clock: systemClock{}}
	return r.retries(ctx, fn, err)
}

// DoValue is Do for a function that returns a value as well as an error. It
// returns the value of the attempt that succeeded, or the zero value and an
// error.
func DoValue[T any](ctx context.Context, p Policy, fn func(context.Context) (T, error)) (T, error) {
	var v T
	err := Do(ctx, p, func(ctx context.Context) error {
		var err error
		v, err = fn(ctx)
		return err
	})
	if err != nil {
		var zero T
		return zero, err
	}
	return v, nil
}

// DoValueWith is Retrier.Do for a function that returns a value as well as
// an error. (Go methods cannot have type parameters.)
func DoValueWith[T any](ctx context.Context, r *Retrier, fn func(context.Context) (T, error)) (T, error) {
	var v T
	err := r.Do(ctx, func(ctx context.Context) error {
		var err error
		v, err = fn(ctx)
		return err
	})
	if err != nil {
		var zero T
		return zero, err
	}
	return v, nil
}

// Retrier retries calls to one dependency with one policy, an optional
// shared Budget, an OnRetry hook and OpenTelemetry counters. Make one per
// client and share it: it is safe for concurrent use, and its instruments
// are created once, in New. It starts no goroutines and needs no Close.
// Make it with New; the zero Retrier is not usable.
type Retrier struct {
	policy    Policy // normalized
	clock     Clock
	budget    *Budget
	onRetry   func(attempt int, err error, delay time.Duration)
	mp        metric.MeterProvider
	name      string
	attempts  metric.Int64Counter // nil in a Retrier made by Do
	exhausted metric.Int64Counter
	addOpts   []metric.AddOption
}

// Option configures a Retrier.
type Option interface {
	apply(*Retrier) error
}

type optionFunc func(*Retrier) error

func (f optionFunc) apply(r *Retrier) error { return f(r) }

// WithBudget makes the Retrier withdraw every retry from b and deposit every
// call into it. Share one Budget between all the Retriers of a dependency.
// A nil b means no budget.
func WithBudget(b *Budget) Option {
	return optionFunc(func(r *Retrier) error { r.budget = b; return nil })
}

// WithClock sets the clock used for delays, the elapsed-time limit and the
// deadline rule; the default is the system clock.
func WithClock(c Clock) Option {
	return optionFunc(func(r *Retrier) error {
		if c == nil {
			return fmt.Errorf("%w: nil clock", ErrInvalidPolicy)
		}
		r.clock = c
		return nil
	})
}

// WithOnRetry calls fn before each wait for a retry, with the number of the
// attempt that failed (from 1), its error and the delay before the next
// attempt. fn runs on the caller's goroutine and must be quick.
func WithOnRetry(fn func(attempt int, err error, delay time.Duration)) Option {
	return optionFunc(func(r *Retrier) error { r.onRetry = fn; return nil })
}

// WithMeterProvider sets where the Retrier's counters are created; the
// default is otel.GetMeterProvider(), a no-op unless the application set
// one.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(r *Retrier) error {
		if mp == nil {
			return fmt.Errorf("%w: nil meter provider", ErrInvalidPolicy)
		}
		r.mp = mp
		return nil
	})
}

// WithName labels the Retrier's metrics with the attribute
// activekit.retry.name, so that the retries of each dependency can be told
// apart.
func WithName(name string) Option {
	return optionFunc(func(r *Retrier) error { r.name = name; return nil })
}

// Metric names, in the instrumentation scope ScopeName.
const (
	ScopeName             = "github.com/activekit/activekit/retry"
	MetricAttempts        = "activekit.retry.attempts"
	MetricBudgetExhausted = "activekit.retry.budget.exhausted"
)

// New returns a Retrier for p, checking p and the options.
//
// It creates two counters: activekit.retry.attempts (every attempt, the first
// included) and activekit.retry.budget.exhausted (retries the budget
// refused).
func New(p Policy, opts ...Option) (*Retrier, error) {
	np, err := p.normalize()
	if err != nil {
		return nil, err
	}
	r := &Retrier{policy: np, clock: systemClock{}}
	for _, o := range opts {
		if err := o.apply(r); err != nil {
			return nil, err
		}
	}
	if r.mp == nil {
		r.mp = otel.GetMeterProvider()
	}
	m := r.mp.Meter(ScopeName)
	r.attempts, err = m.Int64Counter(MetricAttempts,
		metric.WithUnit("{attempt}"),
		metric.WithDescription("Attempts made by retry loops, first attempts included."))
	if err != nil {
		return nil, fmt.Errorf("retry: attempts counter: %w", err)
	}
	r.exhausted, err = m.Int64Counter(MetricBudgetExhausted,
		metric.WithUnit("{retry}"),
		metric.WithDescription("Retries not made because the retry budget was spent."))
	if err != nil {
		return nil, fmt.Errorf("retry: budget counter: %w", err)
	}
	if r.name != "" {
		r.addOpts = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(
			attribute.String("activekit.retry.name", r.name)))}
	}
	return r, nil
}

// Policy returns the Retrier's policy with the defaults filled in.
func (r *Retrier) Policy() Policy { return r.policy }

// Do calls fn until it succeeds or the policy says to stop, as the
// package-level Do does, and in addition deposits the call into the budget,
// withdraws each retry from it (stopping with ErrBudgetExhausted when it is
// spent), calls the OnRetry hook and counts attempts.
func (r *Retrier) Do(ctx context.Context, fn func(context.Context) error) error {
	if err := ctx.Err(); err != nil {
		return &Error{Stop: err}
	}
	if r.budget != nil {
		r.budget.Deposit()
	}
	r.attempts.Add(ctx, 1, r.addOpts...)
	err := fn(ctx)
	if err == nil {
		return nil
	}
	return r.retries(ctx, fn, err)
}

// retries runs the attempts after the first, which failed with err. The
// clock is first read here, not before the first attempt: a call that
// succeeds first time never reads it.
func (r *Retrier) retries(ctx context.Context, fn func(context.Context) error, err error) error {
	p := &r.policy
	start := r.clock.Now()
	var b Backoff
	b.init(p, r.clock)
	for attempt := 1; ; attempt++ {
		now := r.clock.Now()
		if cerr := ended(ctx, now); cerr != nil {
			return &Error{Attempts: attempt, Err: err, Stop: cerr}
		}
		if isPermanent(err) || !p.Retryable(err) {
			return &Error{Attempts: attempt, Err: err}
		}
		if p.MaxAttempts > 0 && attempt >= p.MaxAttempts {
			return &Error{Attempts: attempt, Err: err, Stop: ErrMaxAttempts}
		}
		delay := b.next()
		if h, ok := hint(err); ok && h > delay {
			delay = h
		}
		if p.MaxElapsedTime > 0 && pastElapsed(now.Sub(start), delay, p.MaxElapsedTime) {
			return &Error{Attempts: attempt, Err: err, Stop: ErrMaxElapsed}
		}
		if dl, ok := ctx.Deadline(); ok && !now.Add(delay).Before(dl) {
			return &Error{Attempts: attempt, Err: err, Stop: ErrDeadline}
		}
		if r.budget != nil && !r.budget.Withdraw() {
			if r.exhausted != nil {
				r.exhausted.Add(ctx, 1, r.addOpts...)
			}
			return &Error{Attempts: attempt, Err: err, Stop: ErrBudgetExhausted}
		}
		if r.onRetry != nil {
			r.onRetry(attempt, err, delay)
		}
		if cerr := r.wait(ctx, delay); cerr != nil {
			return &Error{Attempts: attempt, Err: err, Stop: cerr}
		}
		if r.attempts != nil {
			r.attempts.Add(ctx, 1, r.addOpts...)
		}
		if err = fn(ctx); err == nil {
			return nil
		}
	}
}

// ended returns ctx's error if it has ended, or context.DeadlineExceeded if
// its deadline is not after now although ctx.Err() is not yet set (the
// context's timer runs a moment after the deadline): an attempt that
// returned at its caller's deadline ends the loop with the caller's error,
// not with ErrDeadline.
func ended(ctx context.Context, now time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !now.Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}

// wait waits for d or until ctx ends, and returns ctx's error if it ended.
func (r *Retrier) wait(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := r.clock.NewTimer(d)
	select {
	case <-ctx.Done():
		t.Stop()
		return ctx.Err()
	case <-t.C():
		return ctx.Err() // nil unless ctx ended at the same moment
	}
}
