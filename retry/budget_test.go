package retry_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/retry"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

func newBudget(t *testing.T, c retry.BudgetConfig) (*retry.Budget, *fakeClock) {
	t.Helper()
	clock := newManualClock()
	c.Clock = clock
	b, err := retry.NewBudget(c)
	if err != nil {
		t.Fatalf("NewBudget: %v", err)
	}
	return b, clock
}

func TestBudgetRatio(t *testing.T) {
	b, _ := newBudget(t, retry.BudgetConfig{Ratio: 0.5, MinPerSecond: -1})
	if b.Withdraw() {
		t.Fatal("withdrew from an empty budget")
	}
	for range 10 {
		b.Deposit()
	}
	if n := b.Available(); n != 5 {
		t.Fatalf("available = %d after 10 deposits at 0.5, want 5", n)
	}
	for i := range 5 {
		if !b.Withdraw() {
			t.Fatalf("withdrawal %d refused", i+1)
		}
	}
	if b.Withdraw() {
		t.Fatal("sixth withdrawal allowed, want refused")
	}
	b.Deposit()
	b.Deposit()
	if !b.Withdraw() {
		t.Fatal("withdrawal refused after two more deposits")
	}
}

func TestBudgetMinimumRateRefills(t *testing.T) {
	// No ratio: only the minimum, 2 a second over 10s = 20 per window.
	b, clock := newBudget(t, retry.BudgetConfig{Ratio: -1, MinPerSecond: 2, TTL: 10 * time.Second})
	for i := range 20 {
		if !b.Withdraw() {
			t.Fatalf("withdrawal %d refused", i+1)
		}
	}
	if b.Withdraw() {
		t.Fatal("21st withdrawal allowed")
	}
	clock.Advance(5 * time.Second)
	if b.Withdraw() {
		t.Fatal("withdrawals expired before their TTL")
	}
	clock.Advance(5 * time.Second)
	if n := b.Available(); n != 20 {
		t.Fatalf("available = %d a TTL later, want 20", n)
	}
}

func TestBudgetDepositsExpire(t *testing.T) {
	b, clock := newBudget(t, retry.BudgetConfig{Ratio: 1, MinPerSecond: -1, TTL: 10 * time.Second})
	for range 5 {
		b.Deposit()
	}
	clock.Advance(5 * time.Second)
	for range 3 {
		b.Deposit()
	}
	if n := b.Available(); n != 8 {
		t.Fatalf("available = %d, want 8", n)
	}
	clock.Advance(5 * time.Second) // the first five are now a TTL old
	if n := b.Available(); n != 3 {
		t.Fatalf("available = %d after the first deposits expired, want 3", n)
	}
	clock.Advance(10 * time.Second)
	if n := b.Available(); n != 0 {
		t.Fatalf("available = %d after every deposit expired, want 0", n)
	}
	// The ring is reused: deposits in a later window count again.
	b.Deposit()
	if !b.Withdraw() || b.Withdraw() {
		t.Fatal("want exactly one withdrawal after one deposit in a new window")
	}
}

func TestBudgetConcurrent(t *testing.T) {
	const goroutines, perG = 8, 1000
	b, _ := newBudget(t, retry.BudgetConfig{Ratio: 0.1, MinPerSecond: 1, TTL: 10 * time.Second})
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for range perG {
				b.Deposit()
			}
		})
	}
	wg.Wait()
	want := goroutines*perG/10 + 10 // ratio share plus the 1/s minimum over 10s
	if n := b.Available(); n != want {
		t.Fatalf("available = %d, want %d", n, want)
	}
	var granted atomic.Int64
	for range goroutines {
		wg.Go(func() {
			for range perG {
				if b.Withdraw() {
					granted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if g := granted.Load(); g != int64(want) {
		t.Fatalf("granted %d concurrent withdrawals, want exactly %d", g, want)
	}
}

func TestBudgetConfigValidation(t *testing.T) {
	for _, c := range []retry.BudgetConfig{
		{Ratio: 1.5},
		{TTL: time.Millisecond},
		{TTL: time.Hour},
		{TTL: -time.Second},
		{MinPerSecond: 1e9},
	} {
		if _, err := retry.NewBudget(c); !errors.Is(err, retry.ErrInvalidPolicy) {
			t.Errorf("NewBudget(%+v) = %v, want ErrInvalidPolicy", c, err)
		}
	}
	b, err := retry.NewBudget(retry.BudgetConfig{})
	if err != nil {
		t.Fatal(err)
	}
	// Defaults: nothing deposited yet, so only the minimum, 10/s over 10s.
	if n := b.Available(); n != 100 {
		t.Fatalf("default budget available = %d, want 100", n)
	}
}

// metricsReader returns a meter provider and a function that reads the
// counter named name with the given attributes.
func metricsReader(t *testing.T) (*sdkmetric.MeterProvider, func(name string, attrs ...attribute.KeyValue) int64) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return mp, func(name string, attrs ...attribute.KeyValue) int64 {
		t.Helper()
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		want := attribute.NewSet(attrs...)
		for _, sm := range rm.ScopeMetrics {
			if sm.Scope.Name != retry.ScopeName {
				continue
			}
			for _, m := range sm.Metrics {
				if m.Name != name {
					continue
				}
				for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
					if dp.Attributes.Equals(&want) {
						return dp.Value
					}
				}
			}
		}
		return 0
	}
}

func TestRetrierBudgetFailsFast(t *testing.T) {
	mp, read := metricsReader(t)
	// Half the calls may be retried once; no minimum.
	b, _ := newBudget(t, retry.BudgetConfig{Ratio: 0.5, MinPerSecond: -1})
	r, clock := newRetrier(t, retry.Policy{MaxAttempts: 3}, retry.WithBudget(b),
		retry.WithMeterProvider(mp), retry.WithName("users-db"))

	fn, calls := failing(1000, errTransient)
	var exhausted, attempts int
	for range 4 {
		err := r.Do(context.Background(), fn)
		if !errors.Is(err, errTransient) {
			t.Fatalf("err = %v, want it to match the last error", err)
		}
		if errors.Is(err, retry.ErrBudgetExhausted) {
			exhausted++
		}
		attempts += mustRetryError(t, err).Attempts
	}
	// Each call deposits half a retry. Call 1 has 0.5, not a whole retry,
	// and fails fast; call 2 has 1, retries once, then fails fast; calls 3
	// and 4 repeat that: 4 first attempts and 2 retries, and every call
	// ends on the budget.
	if attempts != 6 || *calls != 6 {
		t.Fatalf("attempts = %d, calls = %d, want 6", attempts, *calls)
	}
	if exhausted != 4 {
		t.Fatalf("%d calls stopped on the budget, want 4", exhausted)
	}
	if len(clock.Delays()) != 2 {
		t.Fatalf("waited %d times, want 2", len(clock.Delays()))
	}
	name := attribute.String("activekit.retry.name", "users-db")
	if got := read(retry.MetricAttempts, name); got != 6 {
		t.Fatalf("attempts counter = %d, want 6", got)
	}
	if got := read(retry.MetricBudgetExhausted, name); got != 4 {
		t.Fatalf("budget exhausted counter = %d, want 4", got)
	}
}

func TestRetrierMetricsWithoutName(t *testing.T) {
	mp, read := metricsReader(t)
	r, _ := newRetrier(t, retry.Policy{}, retry.WithMeterProvider(mp))
	fn, _ := failing(2, errTransient)
	if err := r.Do(context.Background(), fn); err != nil {
		t.Fatal(err)
	}
	if got := read(retry.MetricAttempts); got != 3 {
		t.Fatalf("attempts counter = %d, want 3", got)
	}
}
