package consul_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/consul"
	"github.com/activekit/activekit/health"
	"github.com/activekit/activekit/internal/testenv"
)

// clientAt returns a client of the agent at addr whose connections are
// closed at the end of the test.
func clientAt(t *testing.T, addr string) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = addr
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cfg.Transport.CloseIdleConnections)
	return c
}

func checkCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestHealthCheckUp(t *testing.T) {
	if err := consul.HealthCheck(testenv.Consul(t))(checkCtx(t)); err != nil {
		t.Fatalf("check of a live agent: %v", err)
	}
}

func TestHealthCheckDown(t *testing.T) {
	addr := testenv.FreeAddr(t)
	err := consul.HealthCheck(clientAt(t, addr))(checkCtx(t))
	if err == nil {
		t.Fatalf("check of %s, where nothing listens: no error", addr)
	}
	if errors.Is(err, consul.ErrNoLeader) {
		t.Errorf("unreachable agent reported as %v", err)
	}
}

// An agent that answers but whose cluster has lost its leader answers
// status/leader with an empty string.
func TestHealthCheckNoLeader(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/status/leader" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`""`))
	}))
	t.Cleanup(srv.Close)
	err := consul.HealthCheck(clientAt(t, srv.Listener.Addr().String()))(checkCtx(t))
	if !errors.Is(err, consul.ErrNoLeader) {
		t.Fatalf("check with no leader: %v, want ErrNoLeader", err)
	}
}

// The check ends when its ctx does, so a hung agent cannot hold a probe
// beyond the check's timeout.
func TestHealthCheckHonoursContext(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- consul.HealthCheck(clientAt(t, srv.Listener.Addr().String()))(ctx) }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("check after cancel: %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("check did not return after its ctx was cancelled")
	}
}

// The Consul check as a warning: a Consul outage shows in the readiness
// body of every instance without taking the fleet out of the load balancer.
// It needs a Consul agent, so it is compiled but not run.
func ExampleHealthCheck() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		panic(err)
	}
	reg, err := health.NewRegistry()
	if err != nil {
		panic(err)
	}
	check := consul.HealthCheck(client)
	err = reg.Register(health.Check{
		Name:          "consul:leader",
		ComponentType: "component",
		Func: func(ctx context.Context) error {
			return health.Warn(check(ctx))
		},
	})
	if err != nil {
		panic(err)
	}
}

// The registration wired into a health.Lifecycle: registered once the
// server listens, critical as soon as the drain starts (so that callers
// resolving through Consul drop the instance while it still serves), and
// deregistered after the server has stopped. It needs a Consul agent, so it
// is compiled but not run.
func ExampleRegistry_lifecycle() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		panic(err)
	}
	hreg, err := health.NewRegistry()
	if err != nil {
		panic(err)
	}
	_ = hreg.Register(health.Check{Name: "consul:leader", Func: func(ctx context.Context) error {
		return health.Warn(consul.HealthCheck(client)(ctx)) // shared by the fleet: warn only
	}})
	dreg, err := consul.NewRegistry(client, consul.RegistryConfig{HTTPCheck: "http://10.0.0.7:8080/readyz"})
	if err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /readyz", hreg.Handler(health.Readiness))

	var g *consul.Registration
	lc := health.Lifecycle{
		Registry: hreg,
		Servers:  []health.Server{{HTTP: &http.Server{Addr: ":8080", Handler: mux, ReadHeaderTimeout: 5 * time.Second}}},
		OnStarted: []func(context.Context) error{func(ctx context.Context) (err error) {
			g, err = dreg.RegisterInstance(ctx, discovery.Instance{ID: "orders-7f9c", Service: "orders", Address: "10.0.0.7", Port: 8080})
			return err
		}},
		OnDrain: []func(context.Context) error{func(ctx context.Context) error {
			if g == nil { // registration failed or never ran
				return nil
			}
			return g.SetCritical(ctx, "draining")
		}},
		Closers: []health.Closer{{Name: "consul", Close: func(ctx context.Context) error {
			if g == nil {
				return nil
			}
			return g.Close(ctx)
		}}},
	}
	if err := lc.Run(context.Background()); err != nil {
		panic(err)
	}
}
