package retry

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults used for the zero fields of a BudgetConfig. They are Finagle's.
const (
	DefaultBudgetRatio        = 0.2
	DefaultBudgetMinPerSecond = 10.0
	DefaultBudgetTTL          = 10 * time.Second
)

// BudgetConfig configures a Budget. The zero value means the defaults: 20%
// of calls may be retried, plus 10 retries a second whatever the traffic,
// counted over the last 10 seconds.
type BudgetConfig struct {
	// Ratio is how many retries each call earns: 0.2 lets one call in
	// five be retried once. At most 1. Negative means none: only
	// MinPerSecond retries are allowed.
	Ratio float64
	// MinPerSecond is the rate of retries allowed whatever the traffic,
	// so that a client with few calls can still retry. Negative means
	// none.
	MinPerSecond float64
	// TTL is how long a deposit or a withdrawal counts, between 1s and
	// 10m. Deposits expire after between 0.9 and 1 TTL (the window moves
	// in tenths).
	TTL time.Duration
	// Clock is the time source; nil means the system clock.
	Clock Clock
}

const (
	budgetSlots = 10
	budgetScale = 1_000_000 // fixed-point scale for the ratio
)

// Budget caps retries at a fraction of calls, shared by every call of a
// client, so that when a dependency fails for everyone the fleet does not
// multiply its load by the attempt limit (a retry storm). It is the retry
// budget of Finagle and Envoy and of the Google SRE book: each call deposits,
// each retry withdraws, and a retry the budget cannot pay for is not made.
//
// A Budget is safe for concurrent use. Deposit, on every call, is lock-free
// (one clock read and one or two atomic operations). Withdraw, on the retry
// path only, takes a mutex so that concurrent retries never overdraw.
type Budget struct {
	clock       Clock
	start       time.Time
	slot        time.Duration
	ratio       int64 // retries earned per deposit, times budgetScale
	reserve     int64 // retries allowed per TTL whatever the traffic, times budgetScale
	deposits    window
	mu          sync.Mutex // serialises withdrawals
	withdrawals window
}

// NewBudget returns a Budget configured by c.
func NewBudget(c BudgetConfig) (*Budget, error) {
	switch {
	case c.Ratio == 0:
		c.Ratio = DefaultBudgetRatio
	case c.Ratio < 0:
		c.Ratio = 0
	case !(c.Ratio <= 1):
		return nil, fmt.Errorf("%w: budget ratio %v is above 1", ErrInvalidPolicy, c.Ratio)
	}
	switch {
	case c.MinPerSecond == 0:
		c.MinPerSecond = DefaultBudgetMinPerSecond
	case c.MinPerSecond < 0:
		c.MinPerSecond = 0
	case math.IsNaN(c.MinPerSecond) || c.MinPerSecond > 1e6:
		return nil, fmt.Errorf("%w: budget minimum rate %v is not a number up to 1e6", ErrInvalidPolicy, c.MinPerSecond)
	}
	if c.TTL == 0 {
		c.TTL = DefaultBudgetTTL
	}
	if c.TTL < time.Second || c.TTL > 10*time.Minute {
		return nil, fmt.Errorf("%w: budget TTL %v is outside [1s, 10m]", ErrInvalidPolicy, c.TTL)
	}
	if c.Clock == nil {
		c.Clock = systemClock{}
	}
	return &Budget{
		clock:   c.Clock,
		start:   c.Clock.Now(),
		slot:    c.TTL / budgetSlots,
		ratio:   int64(math.Round(c.Ratio * budgetScale)),
		reserve: int64(math.Round(c.MinPerSecond * c.TTL.Seconds() * budgetScale)),
	}, nil
}

// Deposit records a call. Do calls it once per call, before the first
// attempt.
func (b *Budget) Deposit() {
	b.deposits.add(b.epoch())
}

// Withdraw takes one retry from the budget and reports whether there was
// one to take. Do calls it before every retry.
func (b *Budget) Withdraw() bool {
	e := b.epoch()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.available(e) < budgetScale {
		return false
	}
	b.withdrawals.add(e)
	return true
}

// Available returns how many retries the budget would allow now.
func (b *Budget) Available() int {
	return int(max(b.available(b.epoch()), 0) / budgetScale)
}

func (b *Budget) available(e uint32) int64 {
	return int64(b.deposits.sum(e))*b.ratio + b.reserve - int64(b.withdrawals.sum(e))*budgetScale
}

func (b *Budget) epoch() uint32 {
	d := b.clock.Now().Sub(b.start)
	if d < 0 {
		return 0
	}
	return uint32(d / b.slot)
}

// window counts events over the last budgetSlots epochs. Each slot packs
// the epoch it counts (high 32 bits) and its count (low 32 bits) into one
// word, so that moving a slot to a new epoch and counting are one atomic
// operation.
type window struct {
	slots [budgetSlots]atomic.Uint64
}

func (w *window) add(e uint32) {
	s := &w.slots[e%budgetSlots]
	for {
		old := s.Load()
		oe := uint32(old >> 32)
		if oe == e || e-oe >= 1<<31 {
			// Current epoch, or a newer one set by a caller whose clock
			// read was later than ours: count it there.
			s.Add(1)
			return
		}
		if s.CompareAndSwap(old, uint64(e)<<32|1) {
			return
		}
	}
}

func (w *window) sum(e uint32) uint64 {
	var n uint64
	for i := range w.slots {
		v := w.slots[i].Load()
		if e-uint32(v>>32) < budgetSlots || uint32(v>>32)-e < 1<<31 {
			n += v & math.MaxUint32
		}
	}
	return n
}
