package consul_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/consul"
	"github.com/hashicorp/consul/api"
)

// TestWatchStaleReadFetched: with AllowStale, a server that lost contact
// with the leader (partitioned, or behind) answers from its own copy, with
// X-Consul-LastContact saying how long ago it last heard from the leader.
// Update.Fetched, "when the registry last confirmed Instances", must not
// be the arrival of such an answer, or a caller that checks the age of its
// list believes a list from a partitioned follower fresh for as long as
// the partition lasts.
func TestWatchStaleReadFetched(t *testing.T) {
	const lag = 90 * time.Second
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/v1/health/service/orders") || !r.URL.Query().Has("stale") {
			http.Error(w, "unexpected "+r.URL.String(), http.StatusBadRequest)
			return
		}
		if r.URL.Query().Get("index") == "7" { // a blocking query: nothing changes
			<-r.Context().Done()
			return
		}
		w.Header().Set("X-Consul-Index", "7")
		w.Header().Set("X-Consul-LastContact", "90000") // milliseconds
		w.Header().Set("X-Consul-KnownLeader", "false")
		_ = json.NewEncoder(w).Encode([]*api.ServiceEntry{{
			Node:    &api.Node{Node: "n1", Address: "10.0.0.1"},
			Service: &api.AgentService{ID: "orders-1", Service: "orders", Port: 8080},
		}})
	}))
	defer srv.Close()
	cfg := api.DefaultConfig()
	cfg.Address = strings.TrimPrefix(srv.URL, "http://")
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cfg.Transport.CloseIdleConnections()
	r, err := consul.NewResolver(c, consul.ResolverConfig{Query: api.QueryOptions{AllowStale: true}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan discovery.Update, 1)
	done := make(chan error, 1)
	go func() {
		done <- r.Watch(ctx, "orders", func(u discovery.Update) {
			select {
			case got <- u:
			default:
			}
		})
	}()
	var u discovery.Update
	select {
	case u = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("no update")
	}
	arrived := time.Now()
	cancel()
	<-done
	if len(u.Instances) != 1 || u.Err != nil {
		t.Fatalf("update %+v, want orders-1", u)
	}
	if age := arrived.Sub(u.Fetched); age < lag {
		t.Fatalf("Fetched %v before the answer arrived, from a server %v out of contact with the leader: want at least that old", age.Round(time.Millisecond), lag)
	}
}
