package consul_test

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery/consul"
	"github.com/activekit/activekit/internal/testenv"
)

// TestHTTPCheckGatesFirstRegistration registers an instance whose readiness
// endpoint answers 503, as it does while the instance is still starting
// (health.Lifecycle registers in OnStarted, before MarkStarted, and startup
// checks gate readiness until they pass). Until the agent has probed that
// endpoint and seen it pass, the instance must not be passing: an HTTP check
// registered as passing sends traffic to an instance that says it is not
// ready.
func TestHTTPCheckGatesFirstRegistration(t *testing.T) {
	c := testenv.Consul(t)
	service := testenv.Name(t)
	var ready atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	reg := newRegistry(t, c, consul.RegistryConfig{
		TTL: 5 * time.Second, HTTPCheck: srv.URL + "/readyz", HTTPCheckInterval: 200 * time.Millisecond,
	})
	id := service + "-1"
	register(t, reg, instance(service, id, 9001))
	entries, _, err := c.Health().Service(service, "", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Fatalf("instance passing before its readiness endpoint was probed: %+v", entries[0].Checks)
	}
	ready.Store(true)
	w := watch(t, newResolver(t, c, consul.ResolverConfig{}), service)
	w.waitUntil(t, 5*time.Second, "instance passing once ready", has(id))
}
