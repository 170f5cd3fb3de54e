package events_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/activekit/activekit/events"
)

func ExampleNew() {
	e := events.New("/orders-service", "com.example.order.created", []byte(`{"total":42}`))
	e.Subject = "order-1001"
	e.DataContentType = "application/json"
	fmt.Println(e.Validate(), e.SpecVersion, e.Key())

	e.Source = "not a URI reference"
	err := e.Validate()
	fmt.Println(errors.Is(err, events.ErrInvalid), err)
	// Output:
	// <nil> 1.0 order-1001
	// true events: invalid event: source: not a URI-reference: character ' ' is not allowed
}

func ExampleChain() {
	h := func(ctx context.Context, e events.Event) error {
		fmt.Println("handling", e.Subject)
		return nil
	}
	// Recover outermost, so a panic anywhere becomes a permanent error;
	// Retry retries in place with the retry package's default policy.
	wrapped := events.Chain(h, events.Recover(), events.Tracing(events.TracingConfig{}), events.Retry(nil))
	e := events.New("/orders-service", "com.example.order.created", nil)
	e.Subject = "order-1001"
	fmt.Println(wrapped(context.Background(), e))
	// Output:
	// handling order-1001
	// <nil>
}

func ExampleUnavailable() {
	errRefused := errors.New("dial tcp 10.0.0.7:6379: connect: connection refused")
	h := func(ctx context.Context, e events.Event) error {
		// The customer database is down: not this event's fault.
		return fmt.Errorf("loading customer %s: %w", e.Subject, events.Unavailable(errRefused))
	}
	e := events.New("/orders-service", "com.example.order.created", nil)
	e.Subject = "customer-7"
	err := h(context.Background(), e)
	fmt.Println(err)
	fmt.Println(events.IsUnavailable(err), errors.Is(err, events.ErrUnavailable), errors.Is(err, errRefused))
	// Unavailable wins over Permanent: still retried, never dead-lettered.
	fmt.Println(events.IsUnavailable(events.Permanent(err)))
	// Output:
	// loading customer customer-7: dial tcp 10.0.0.7:6379: connect: connection refused
	// true true true
	// true
}
