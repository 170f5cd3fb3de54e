package retry_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/activekit/activekit/retry"
)

func ExampleDo() {
	attempts := 0
	err := retry.Do(context.Background(), retry.Policy{InitialInterval: time.Millisecond},
		func(ctx context.Context) error {
			attempts++
			if attempts < 3 {
				return errors.New("connection reset") // transient: retried
			}
			return nil
		})
	fmt.Println(attempts, err)
	// Output: 3 <nil>
}

func ExampleDo_permanent() {
	errNotFound := errors.New("user not found")
	err := retry.Do(context.Background(), retry.Policy{}, func(ctx context.Context) error {
		return retry.Permanent(errNotFound) // retrying cannot help
	})
	var re *retry.Error
	if errors.As(err, &re) {
		fmt.Println("attempts:", re.Attempts)
	}
	fmt.Println(errors.Is(err, errNotFound))
	// Output:
	// attempts: 1
	// true
}

func ExampleDoValue() {
	calls := 0
	name, err := retry.DoValue(context.Background(), retry.Policy{InitialInterval: time.Millisecond},
		func(ctx context.Context) (string, error) {
			calls++
			if calls == 1 {
				return "", errors.New("primary stepped down")
			}
			return "ada", nil
		})
	fmt.Println(name, err, calls)
	// Output: ada <nil> 2
}

func ExampleNewBudget() {
	// One budget per dependency, shared by every call of every Retrier that
	// talks to it. Here: 10% of calls may be retried, with no minimum rate.
	budget, err := retry.NewBudget(retry.BudgetConfig{Ratio: 0.1, MinPerSecond: -1})
	if err != nil {
		panic(err)
	}
	retries := 0
	r, err := retry.New(retry.Policy{InitialInterval: time.Millisecond}, retry.WithBudget(budget),
		retry.WithOnRetry(func(attempt int, err error, delay time.Duration) { retries++ }))
	if err != nil {
		panic(err)
	}
	down := errors.New("connection refused")
	failures := 0
	for range 20 {
		// The dependency is down for everyone: without a budget every
		// call would make 4 attempts, 80 in all.
		if err := r.Do(context.Background(), func(ctx context.Context) error { return down }); errors.Is(err, retry.ErrBudgetExhausted) {
			failures++
		}
	}
	fmt.Println("calls stopped by the budget:", failures)
	fmt.Println("retries made:", retries)
	fmt.Println("retries left:", budget.Available())
	// Output:
	// calls stopped by the budget: 20
	// retries made: 2
	// retries left: 0
}

func ExampleParseRetryAfter() {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for _, v := range []string{"120", "Fri, 01 May 2026 12:00:30 GMT", "-5", "soon"} {
		d, ok := retry.ParseRetryAfter(v, now)
		fmt.Println(d, ok)
	}
	// Output:
	// 2m0s true
	// 30s true
	// 0s false
	// 0s false
}

func ExampleAfter() {
	// An HTTP client turns a 429 or 503 into an error carrying the server's
	// Retry-After, which becomes a floor on the next delay.
	check := func(resp *http.Response) error {
		if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode < 500 {
			return nil
		}
		err := fmt.Errorf("status %d", resp.StatusCode)
		if d, ok := retry.ResponseRetryAfter(resp, time.Now()); ok {
			return retry.After(d, err)
		}
		return err
	}
	resp := &http.Response{StatusCode: http.StatusServiceUnavailable, Header: http.Header{"Retry-After": {"2"}}}
	fmt.Println(check(resp))
	// Output: status 503
}
