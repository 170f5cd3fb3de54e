package consul_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/consul"
	"github.com/hashicorp/consul/api"
)

// TestWatchHungAgent: an agent that accepts a blocking query and then never
// answers (a stopped or wedged agent process keeps its TCP connections open,
// so no error ever reaches the client) must not freeze the watch silently
// on its last list. Consul answers a blocking query by WaitTime plus at most
// WaitTime/16 of jitter; a query far past that is a failure, reported as
// one (Update.Err with the last list) and retried.
func TestWatchHungAgent(t *testing.T) {
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if idx := r.URL.Query().Get("index"); idx != "" && idx != "0" {
			select { // hang: the blocking query never returns
			case <-r.Context().Done():
			case <-stop:
			}
			return
		}
		w.Header().Set("X-Consul-Index", "5")
		w.Header().Set("X-Consul-Knownleader", "true")
		_ = json.NewEncoder(w).Encode([]*api.ServiceEntry{{
			Node:    &api.Node{Node: "n1", Address: "127.0.0.1"},
			Service: &api.AgentService{ID: "orders-1", Service: "orders", Address: "127.0.0.1", Port: 9001},
		}})
	}))
	defer srv.Close()
	defer close(stop)
	cfg := api.DefaultConfig()
	cfg.Address = srv.Listener.Addr().String()
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w := watch(t, newResolver(t, c, consul.ResolverConfig{WaitTime: time.Second}), "orders")
	w.waitUntil(t, 5*time.Second, "first list", has("orders-1"))
	u := w.waitUntil(t, 20*time.Second, "error from the hung query", func(u discovery.Update) bool { return u.Err != nil })
	if !slices.Contains(ids(u), "orders-1") {
		t.Fatalf("update after the hung query %+v, want the last known list", u)
	}
}
