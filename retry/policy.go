package retry

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Defaults used for the zero fields of a Policy.
const (
	DefaultInitialInterval = 100 * time.Millisecond
	DefaultMultiplier      = 2.0
	DefaultMaxInterval     = 10 * time.Second
	DefaultMaxAttempts     = 4
	DefaultMaxElapsedTime  = 30 * time.Second
)

// Jitter is how a Policy randomises each delay. Randomising spreads the
// retries of many clients that failed at the same moment (a failover hits
// every instance at once) so that they do not return in lockstep.
type Jitter int

const (
	// FullJitter waits a uniform random time in [0, d], where d is the
	// exponential delay capped at MaxInterval. It is the default: it spreads
	// load the most.
	FullJitter Jitter = iota
	// EqualJitter waits a uniform random time in [d/2, d]: never much less
	// than the exponential delay.
	EqualJitter
	// DecorrelatedJitter waits a uniform random time in
	// [InitialInterval, min(MaxInterval, 3*previous)], where previous is the
	// last delay (InitialInterval at first). It ignores Multiplier.
	DecorrelatedJitter
	// NoJitter waits exactly d. Use it in tests and examples, rarely in
	// production: many clients retrying in step is the storm jitter avoids.
	NoJitter
)

// String returns the jitter kind's name.
func (j Jitter) String() string {
	switch j {
	case FullJitter:
		return "full"
	case EqualJitter:
		return "equal"
	case DecorrelatedJitter:
		return "decorrelated"
	case NoJitter:
		return "none"
	}
	return fmt.Sprintf("Jitter(%d)", int(j))
}

// Policy says how often and for how long to retry. It is a plain value: copy
// it, share it, store it in configuration.
//
// The zero value means the defaults: 100ms initial interval, doubling, capped
// at 10s, at most 4 attempts (the first call and 3 retries; with full jitter
// at most 0.7s of waiting, which fits a typical request deadline), at most
// 30s in all, full jitter, and IsRetryable as the classifier. A negative
// MaxAttempts or MaxElapsedTime means no limit of that kind (the context
// deadline and the budget still apply).
type Policy struct {
	// InitialInterval is the delay before the first retry, before jitter.
	// Zero means 100ms, or MaxInterval if that is set and smaller.
	InitialInterval time.Duration
	// Multiplier scales the delay after each retry; at least 1.
	Multiplier float64
	// MaxInterval caps each delay before jitter. Zero means the larger of
	// 10s and InitialInterval.
	MaxInterval time.Duration
	// MaxAttempts is the most attempts made, the first included.
	MaxAttempts int
	// MaxElapsedTime bounds the time spent retrying, from the first
	// failure to the start of the last attempt: a retry whose delay would
	// end past it is not scheduled. (The first attempt is not counted, so
	// that a call that succeeds first time never reads the clock; the
	// context deadline bounds the call as a whole.)
	MaxElapsedTime time.Duration
	// Jitter randomises each delay; FullJitter by default.
	Jitter Jitter
	// Retryable reports whether an attempt's error is worth another
	// attempt; nil means IsRetryable. Errors marked Permanent stop the
	// loop whatever it says, and a done context always stops it. An inner
	// retry loop's *Error stops it only if Retryable says so (IsRetryable
	// does).
	Retryable func(error) bool
}

// Validate reports whether p can be used, as an error wrapping
// ErrInvalidPolicy.
func (p Policy) Validate() error {
	_, err := p.normalize()
	return err
}

// valid is the allocation-free check on the hot path of Do.
func (p *Policy) valid() bool {
	return p.InitialInterval >= 0 && p.MaxInterval >= 0 &&
		(p.Multiplier == 0 || p.Multiplier >= 1 && !math.IsInf(p.Multiplier, 1)) &&
		(p.MaxInterval == 0 || p.MaxInterval >= p.InitialInterval) &&
		p.Jitter >= FullJitter && p.Jitter <= NoJitter
}

// normalize returns p with the defaults filled in, or an error.
func (p Policy) normalize() (Policy, error) {
	switch {
	case p.InitialInterval < 0:
		return p, fmt.Errorf("%w: negative initial interval %v", ErrInvalidPolicy, p.InitialInterval)
	case p.MaxInterval < 0:
		return p, fmt.Errorf("%w: negative maximum interval %v", ErrInvalidPolicy, p.MaxInterval)
	case p.Multiplier != 0 && !(p.Multiplier >= 1) || math.IsInf(p.Multiplier, 1):
		return p, fmt.Errorf("%w: multiplier %v is not a finite number of at least 1", ErrInvalidPolicy, p.Multiplier)
	case p.MaxInterval != 0 && p.MaxInterval < p.InitialInterval:
		return p, fmt.Errorf("%w: maximum interval %v is below the initial interval %v", ErrInvalidPolicy, p.MaxInterval, p.InitialInterval)
	case p.Jitter < FullJitter || p.Jitter > NoJitter:
		return p, fmt.Errorf("%w: unknown jitter %v", ErrInvalidPolicy, p.Jitter)
	}
	if p.InitialInterval == 0 {
		p.InitialInterval = DefaultInitialInterval
		if p.MaxInterval != 0 {
			p.InitialInterval = min(p.InitialInterval, p.MaxInterval)
		}
	}
	if p.Multiplier == 0 {
		p.Multiplier = DefaultMultiplier
	}
	if p.MaxInterval == 0 {
		p.MaxInterval = max(DefaultMaxInterval, p.InitialInterval)
	}
	if p.MaxAttempts == 0 {
		p.MaxAttempts = DefaultMaxAttempts
	}
	if p.MaxElapsedTime == 0 {
		p.MaxElapsedTime = DefaultMaxElapsedTime
	}
	if p.Retryable == nil {
		p.Retryable = IsRetryable
	}
	return p, nil
}

// Backoff is a Policy's sequence of delays as a backoff.BackOff, for loops
// that wait without calling a function each time, such as a watch that
// re-polls after errors, or for backoff.Retry.
//
// NextBackOff returns backoff.Stop once MaxAttempts-1 delays have been
// handed out or the next delay would end past MaxElapsedTime since the last
// Reset. A Backoff is not safe for concurrent use; make one per loop.
type Backoff struct {
	p       Policy // normalized
	clock   Clock
	exp     backoff.ExponentialBackOff
	prev    time.Duration // last decorrelated delay
	start   time.Time
	retries int
}

var _ backoff.BackOff = (*Backoff)(nil)

// NewBackoff returns p's delay sequence. A nil clock means the system clock.
func NewBackoff(p Policy, clock Clock) (*Backoff, error) {
	np, err := p.normalize()
	if err != nil {
		return nil, err
	}
	if clock == nil {
		clock = systemClock{}
	}
	b := &Backoff{}
	b.init(&np, clock)
	b.Reset()
	return b, nil
}

// init prepares b for the normalized policy p without reading the clock.
func (b *Backoff) init(p *Policy, clock Clock) {
	b.p = *p
	b.clock = clock
	b.exp = backoff.ExponentialBackOff{
		InitialInterval:     p.InitialInterval,
		RandomizationFactor: 0, // our jitter is applied on top
		Multiplier:          p.Multiplier,
		MaxInterval:         p.MaxInterval,
		MaxElapsedTime:      0, // our limits are checked by the caller
		Stop:                backoff.Stop,
		Clock:               clock,
	}
	b.exp.Reset()
	b.prev = p.InitialInterval
}

// Reset starts the sequence again and restarts the elapsed-time clock.
func (b *Backoff) Reset() {
	b.exp.Reset()
	b.prev = b.p.InitialInterval
	b.retries = 0
	b.start = b.clock.Now()
}

// NextBackOff returns the next delay, or backoff.Stop when the policy's
// attempt or elapsed-time limit is reached.
func (b *Backoff) NextBackOff() time.Duration {
	if b.p.MaxAttempts > 0 && b.retries >= b.p.MaxAttempts-1 {
		return backoff.Stop
	}
	d := b.next()
	if b.p.MaxElapsedTime > 0 && pastElapsed(b.clock.Now().Sub(b.start), d, b.p.MaxElapsedTime) {
		return backoff.Stop
	}
	b.retries++
	return d
}

// pastElapsed reports whether a delay d that starts elapsed after the
// elapsed-time clock started would end past limit. It does not add elapsed
// and d, which could overflow (a huge Retry-After hint) and wrap negative.
func pastElapsed(elapsed, d, limit time.Duration) bool {
	return d > limit-max(elapsed, 0)
}

// next returns the next jittered delay, ignoring limits.
func (b *Backoff) next() time.Duration {
	switch b.p.Jitter {
	case DecorrelatedJitter:
		lo := b.p.InitialInterval
		hi := b.p.MaxInterval
		if b.prev <= hi/3 {
			hi = b.prev * 3
		}
		hi = max(hi, lo)
		d := lo + randN(hi-lo)
		b.prev = d
		return d
	case EqualJitter:
		d := b.exp.NextBackOff()
		return d - d/2 + randN(d/2)
	case NoJitter:
		return b.exp.NextBackOff()
	default: // FullJitter
		return randN(b.exp.NextBackOff())
	}
}

// randN returns a uniform random duration in [0, n].
func randN(n time.Duration) time.Duration {
	if n <= 0 {
		return 0
	}
	if n == math.MaxInt64 {
		return time.Duration(rand.Int64())
	}
	return time.Duration(rand.Int64N(int64(n) + 1))
}
