package retry_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/activekit/activekit/retry"
)

// TestBudgetMatchesModel runs random deposits, withdrawals and clock moves
// (within a slot, across slots, past the whole TTL) against a plain model of
// the documented window: a deposit or withdrawal counts while fewer than ten
// tenths of the TTL have started since the tenth it was made in.
func TestBudgetMatchesModel(t *testing.T) {
	for seed := range uint64(40) {
		rng := rand.New(rand.NewPCG(seed, 1))
		b, clock := newBudget(t, retry.BudgetConfig{Ratio: 0.3, MinPerSecond: 0.5, TTL: 2 * time.Second})
		start := clock.Now()
		slot := 200 * time.Millisecond
		var deps, wds []int64
		epoch := func() int64 { return int64(clock.Now().Sub(start) / slot) }
		avail := func() int64 {
			e := epoch()
			n := int64(0)
			for _, d := range deps {
				if e-d < 10 {
					n += 300000
				}
			}
			n += 1000000
			for _, w := range wds {
				if e-w < 10 {
					n -= 1000000
				}
			}
			return n
		}
		for i := range 2000 {
			switch r := rng.IntN(10); {
			case r < 5:
				b.Deposit()
				deps = append(deps, epoch())
			case r < 8:
				want := avail() >= 1000000
				got := b.Withdraw()
				if got != want {
					t.Fatalf("seed %d op %d: Withdraw = %v, model %v", seed, i, got, want)
				}
				if got {
					wds = append(wds, epoch())
				}
			case r < 9:
				clock.Advance(time.Duration(rng.IntN(300)) * time.Millisecond)
			default:
				if rng.IntN(20) == 0 {
					clock.Advance(time.Duration(rng.IntN(10)) * time.Second)
				}
			}
			if g, w := b.Available(), int(max(avail(), 0)/1000000); g != w {
				t.Fatalf("seed %d op %d: Available = %d, model %d", seed, i, g, w)
			}
		}
	}
}
