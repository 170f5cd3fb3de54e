package retry_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/activekit/activekit/retry"
	"go.opentelemetry.io/otel/metric/noop"
)

func succeed(context.Context) error { return nil }

// BenchmarkDo is the hot path: a call that succeeds first time.
func BenchmarkDo(b *testing.B) {
	ctx := context.Background()
	p := retry.Policy{}
	b.ReportAllocs()
	for b.Loop() {
		if err := retry.Do(ctx, p, succeed); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDoValue(b *testing.B) {
	ctx := context.Background()
	p := retry.Policy{}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := retry.DoValue(ctx, p, func(context.Context) (int, error) { return 1, nil }); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRetrierDo(b *testing.B) {
	ctx := context.Background()
	r, err := retry.New(retry.Policy{}, retry.WithMeterProvider(noop.NewMeterProvider()))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := r.Do(ctx, succeed); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRetrierDoBudget(b *testing.B) {
	ctx := context.Background()
	budget, err := retry.NewBudget(retry.BudgetConfig{})
	if err != nil {
		b.Fatal(err)
	}
	r, err := retry.New(retry.Policy{}, retry.WithBudget(budget), retry.WithMeterProvider(noop.NewMeterProvider()))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := r.Do(ctx, succeed); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkDoRetryOnce is the cost of one failure and one retry, with no
// wait (the fake clock fires at once).
func BenchmarkDoRetryOnce(b *testing.B) {
	ctx := context.Background()
	errOnce := errors.New("once")
	r, err := retry.New(retry.Policy{InitialInterval: time.Millisecond}, retry.WithClock(newAutoClock()),
		retry.WithMeterProvider(noop.NewMeterProvider()))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		failed := false
		err := r.Do(ctx, func(context.Context) error {
			if !failed {
				failed = true
				return errOnce
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}
