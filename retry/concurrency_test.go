package retry_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/retry"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// TestSharedRetrierAndBudget runs many failing calls at once through one
// Retrier and one Budget: the budget must never allow more retries than
// the calls earned, and every call must end in a *retry.Error.
func TestSharedRetrierAndBudget(t *testing.T) {
	const goroutines, perG = 8, 200
	b, _ := newBudget(t, retry.BudgetConfig{Ratio: 0.1, MinPerSecond: -1})
	var retries atomic.Int64
	r, _ := newRetrier(t, retry.Policy{MaxAttempts: 4}, retry.WithBudget(b),
		retry.WithOnRetry(func(int, error, time.Duration) { retries.Add(1) }))
	var calls atomic.Int64
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for range perG {
				err := r.Do(context.Background(), func(context.Context) error {
					calls.Add(1)
					return errTransient
				})
				var re *retry.Error
				if !errors.As(err, &re) || !errors.Is(err, errTransient) {
					t.Errorf("err = %v, want a *retry.Error matching errTransient", err)
					return
				}
			}
		})
	}
	wg.Wait()
	earned := int64(goroutines * perG / 10)
	if got := retries.Load(); got > earned || got < earned/2 {
		t.Fatalf("%d retries, want at most the %d earned (and not far fewer)", got, earned)
	}
	if got, want := calls.Load(), int64(goroutines*perG)+retries.Load(); got != want {
		t.Fatalf("%d attempts, want %d calls + retries = %d", got, goroutines*perG, want)
	}
}

// countingMeterProvider counts the instruments created through it.
type countingMeterProvider struct {
	noop.MeterProvider
	instruments atomic.Int64
}

func (p *countingMeterProvider) Meter(string, ...metric.MeterOption) metric.Meter {
	return countingMeter{n: &p.instruments}
}

type countingMeter struct {
	noop.Meter
	n *atomic.Int64
}

func (m countingMeter) Int64Counter(name string, opts ...metric.Int64CounterOption) (metric.Int64Counter, error) {
	m.n.Add(1)
	return m.Meter.Int64Counter(name, opts...)
}

func TestInstrumentsCreatedOnce(t *testing.T) {
	mp := &countingMeterProvider{}
	r, _ := newRetrier(t, retry.Policy{}, retry.WithMeterProvider(mp))
	created := mp.instruments.Load()
	if created != 2 {
		t.Fatalf("New created %d instruments, want 2", created)
	}
	for range 100 {
		fn, _ := failing(1, errTransient)
		if err := r.Do(context.Background(), fn); err != nil {
			t.Fatal(err)
		}
	}
	if got := mp.instruments.Load(); got != created {
		t.Fatalf("%d instruments after 100 calls, want still %d", got, created)
	}
}
