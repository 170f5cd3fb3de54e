package memregistry_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/memregistry"
)

// Example runs two instances of a service in one process, registers them
// in an in-memory registry, and calls the service by name through a
// discovery.Transport. When one instance drains, calls go to the other.
func Example() {
	ctx := context.Background()
	reg := memregistry.New(memregistry.Config{})

	var regs []discovery.Registration
	for _, id := range []string{"orders-1", "orders-2"} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from %s", id)
		}))
		defer srv.Close()
		host, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
		p, _ := strconv.Atoi(port)
		g, err := reg.Register(ctx, discovery.Instance{ID: id, Service: "orders", Address: host, Port: p})
		if err != nil {
			panic(err)
		}
		defer g.Close(ctx)
		regs = append(regs, g)
	}

	base := &http.Transport{}
	defer base.CloseIdleConnections()
	tr, err := discovery.NewTransport(reg, discovery.TransportConfig{Base: base})
	if err != nil {
		panic(err)
	}
	defer tr.Close()
	client := &http.Client{Transport: tr}

	// orders-1 leaves rotation; the watch behind the transport drops it.
	if err := regs[0].(discovery.Drainer).Drain(ctx, "shutting down"); err != nil {
		panic(err)
	}
	fmt.Println(len(reg.Instances("orders")), "healthy instance")

	resp, err := client.Get("http://orders/hello")
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(string(body))
	// Output:
	// 1 healthy instance
	// hello from orders-2
}

// ExampleRegistry_Leader elects a leader for singleton work; the fencing
// token grows with every term.
func ExampleRegistry_Leader() {
	reg := memregistry.New(memregistry.Config{})
	leader := reg.Leader("nightly-report")
	for range 2 {
		err := leader.Lead(context.Background(), func(ctx context.Context, token uint64) error {
			fmt.Println("leading with token", token)
			return nil
		})
		if err != nil {
			panic(err)
		}
	}
	// Output:
	// leading with token 1
	// leading with token 2
}
