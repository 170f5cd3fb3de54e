package consul_test

import (
	"context"
	"errors"
	"log"
	"net/http"
	"time"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/consul"
	"github.com/hashicorp/consul/api"
)

// ExampleRegistry registers this instance with the local agent at startup,
// drains it on shutdown, and deregisters it. It needs a Consul agent, so it
// is compiled but not run.
func ExampleRegistry() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	reg, err := consul.NewRegistry(client, consul.RegistryConfig{
		TTL:        10 * time.Second,
		HTTPCheck:  "http://10.0.0.7:8080/readyz",
		Version:    "1.4.2",
		ConfigHash: "9f2c1e",
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	g, err := reg.RegisterInstance(ctx, discovery.Instance{
		ID: "orders-7f9c", Service: "orders", Address: "10.0.0.7", Port: 8080,
	})
	if err != nil {
		log.Fatal(err)
	}
	// ... serve ...

	// On SIGTERM: out of rotation first, then stop serving, then leave.
	_ = g.SetCritical(ctx, "draining")
	// server.Shutdown(ctx)
	_ = g.Close(ctx)
}

// ExampleRegistration_SetMeta keeps the configuration hash in the catalog
// true when the configuration changes at run time (here a new hash from a
// configuration store's subscription), so that an operator comparing the
// fleet in Consul sees the configuration each instance runs. It needs a
// Consul agent, so it is compiled but not run.
func ExampleRegistration_SetMeta() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	reg, err := consul.NewRegistry(client, consul.RegistryConfig{ConfigHash: "9f2c1e"})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	g, err := reg.RegisterInstance(ctx, discovery.Instance{
		ID: "orders-7f9c", Service: "orders", Address: "10.0.0.7", Port: 8080,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer g.Close(ctx)

	// The configuration changed: its new hash is 4b07aa.
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := g.SetMeta(ctx, consul.MetaConfigHash, "4b07aa"); err != nil {
		// Kept all the same: the next heartbeat sends it.
		log.Print(err)
	}
}

// ExampleResolver calls the healthy "orders" instances by name.
func ExampleResolver() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	res, err := consul.NewResolver(client, consul.ResolverConfig{Filter: `Service.Meta.version != "1.4.1"`})
	if err != nil {
		log.Fatal(err)
	}
	tr, err := discovery.NewTransport(res, discovery.TransportConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	resp, err := (&http.Client{Transport: tr}).Get("http://orders/v1/orders/42")
	if err == nil {
		resp.Body.Close()
	}
}

// ExampleLeader runs singleton work on one instance of the fleet at a time,
// and campaigns again when leadership is lost.
func ExampleLeader() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	leader, err := consul.NewLeader(client, "service/orders/leader", consul.LeaderConfig{Value: []byte("orders-7f9c")})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	for ctx.Err() == nil {
		err := leader.Lead(ctx, func(ctx context.Context, token uint64) error {
			// Pass token with every write, so that a deposed leader's
			// late writes are refused. Return when ctx ends.
			<-ctx.Done()
			return nil
		})
		if err != nil && !errors.Is(err, discovery.ErrLeadershipLost) {
			time.Sleep(time.Second) // election error: campaign again after a pause
		}
	}
}
