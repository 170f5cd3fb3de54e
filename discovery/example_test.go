package discovery_test

import (
	"fmt"
	"net/http"
	"time"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/memregistry"
	"github.com/activekit/activekit/retry"
)

// ExampleNewTransport makes an HTTP client that calls services by name:
// http://orders/... goes to a healthy instance of "orders", idempotent
// requests are retried on another instance within a retry budget, and an
// instance that drops a connection is ejected at once.
func ExampleNewTransport() {
	var resolver discovery.Resolver = memregistry.New(memregistry.Config{}) // or consul.NewResolver
	budget, err := retry.NewBudget(retry.BudgetConfig{Ratio: 0.1})
	if err != nil {
		panic(err)
	}
	tr, err := discovery.NewTransport(resolver, discovery.TransportConfig{
		Budget:   budget,
		Balancer: discovery.BalancerConfig{ConsecutiveFailures: 3, BaseEjectionTime: 5 * time.Second},
	})
	if err != nil {
		panic(err)
	}
	defer tr.Close()
	client := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	_ = client // client.Get("http://orders/v1/orders/42")
	// Output:
}

// ExampleBalancer picks instances by the power of two choices and ejects
// one that fails.
func ExampleBalancer() {
	b, err := discovery.NewBalancer(discovery.BalancerConfig{ConsecutiveFailures: 1})
	if err != nil {
		panic(err)
	}
	b.Update([]discovery.Instance{
		{ID: "a", Service: "orders", Address: "10.0.0.1", Port: 8080},
		{ID: "b", Service: "orders", Address: "10.0.0.2", Port: 8080},
	})
	lease, err := b.Pick()
	if err != nil {
		panic(err)
	}
	failed := lease.Instance().ID
	lease.Done(discovery.Failure) // a 5xx: with ConsecutiveFailures 1, ejected

	for range 3 {
		lease, _ := b.Pick()
		fmt.Println(lease.Instance().ID != failed)
		lease.Done(discovery.Success)
	}
	// Output:
	// true
	// true
	// true
}
