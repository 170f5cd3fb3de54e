package consul_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery/consul"
	"github.com/hashicorp/consul/api"
)

// fakeAgent is the part of a Consul agent's HTTP API that a Registration
// uses, with a switch to make it forget its services as a restarted agent
// does.
type fakeAgent struct {
	mu         sync.Mutex
	registered map[string]api.AgentServiceRegistration
	updates    []string // statuses received by check updates
	forgetful  bool     // answer check updates with 404 until the next registration
	events     chan string
}

func newFakeAgent(t *testing.T) (*fakeAgent, *api.Client) {
	t.Helper()
	a := &fakeAgent{registered: map[string]api.AgentServiceRegistration{}, events: make(chan string, 1000)}
	srv := httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(srv.Close)
	c, err := api.NewClient(&api.Config{Address: strings.TrimPrefix(srv.URL, "http://")})
	if err != nil {
		t.Fatal(err)
	}
	return a, c
}

func (a *fakeAgent) serve(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case r.URL.Path == "/v1/agent/service/register":
		var reg api.AgentServiceRegistration
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &reg); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		a.registered[reg.ID] = reg
		a.forgetful = false
		a.events <- "register"
	case strings.HasPrefix(r.URL.Path, "/v1/agent/check/update/"):
		if a.forgetful {
			http.Error(w, `Unknown check ID "x". Ensure that the check ID is passed, not the check name.`, http.StatusNotFound)
			a.events <- "update-404"
			return
		}
		var u struct{ Status, Output string }
		_ = json.NewDecoder(r.Body).Decode(&u)
		a.updates = append(a.updates, u.Status)
		a.events <- "update-" + u.Status
	case strings.HasPrefix(r.URL.Path, "/v1/agent/service/deregister/"):
		delete(a.registered, strings.TrimPrefix(r.URL.Path, "/v1/agent/service/deregister/"))
		a.events <- "deregister"
	default:
		http.NotFound(w, r)
	}
}

func (a *fakeAgent) next(t *testing.T) string {
	t.Helper()
	select {
	case e := <-a.events:
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("no request from the registration within 5s")
		return ""
	}
}

func TestRegistrationPayload(t *testing.T) {
	a, c := newFakeAgent(t)
	reg := newRegistry(t, c, consul.RegistryConfig{
		TTL: 3 * time.Second, Version: "2.0.0", ConfigHash: "h1",
		HTTPCheck: "http://127.0.0.1:9001/readyz",
	})
	inst := instance("orders", "orders-1", 9001)
	inst.Meta = map[string]string{"zone": "z1"}
	g := register(t, reg, inst)
	if e := a.next(t); e != "register" {
		t.Fatalf("first request %q", e)
	}
	a.mu.Lock()
	got := a.registered["orders-1"]
	a.mu.Unlock()
	if got.Name != "orders" || got.Address != "127.0.0.1" || got.Port != 9001 ||
		got.Meta["zone"] != "z1" || got.Meta[consul.MetaVersion] != "2.0.0" || got.Meta[consul.MetaConfigHash] != "h1" {
		t.Fatalf("registration %+v", got)
	}
	if inst.Meta[consul.MetaVersion] != "" {
		t.Fatal("the caller's Meta map was modified")
	}
	if len(got.Checks) != 2 {
		t.Fatalf("%d checks, want the TTL and the HTTP check", len(got.Checks))
	}
	ttl, httpc := got.Checks[0], got.Checks[1]
	if ttl.CheckID != g.CheckID() || ttl.TTL != "3s" || ttl.Status != api.HealthPassing || ttl.DeregisterCriticalServiceAfter != "1m0s" {
		t.Fatalf("TTL check %+v", ttl)
	}
	if httpc.HTTP != "http://127.0.0.1:9001/readyz" || httpc.Interval != "5s" || httpc.DeregisterCriticalServiceAfter != "1m0s" {
		t.Fatalf("HTTP check %+v", httpc)
	}
	if e := a.next(t); e != "update-passing" {
		t.Fatalf("heartbeat sent %q", e)
	}
	if err := g.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e := a.next(t); e != "deregister" {
		t.Fatalf("Close sent %q", e)
	}
}

// TestReregisterWhenAgentForgets: an agent that answers a heartbeat with 404
// (it lost its state) gets the service registered again, in the status the
// registration was in.
func TestReregisterWhenAgentForgets(t *testing.T) {
	a, c := newFakeAgent(t)
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: time.Second})
	g := register(t, reg, instance("orders", "orders-1", 9001))
	if e := a.next(t); e != "register" {
		t.Fatalf("first request %q", e)
	}
	if e := a.next(t); e != "update-passing" {
		t.Fatalf("heartbeat sent %q", e)
	}
	a.mu.Lock()
	a.forgetful = true
	delete(a.registered, "orders-1")
	a.mu.Unlock()
	if e := a.next(t); e != "update-404" {
		t.Fatalf("heartbeat sent %q", e)
	}
	if e := a.next(t); e != "register" {
		t.Fatalf("after a 404, %q, want a registration", e)
	}
	if e := a.next(t); e != "update-passing" {
		t.Fatalf("after re-registration, %q", e)
	}

	// A drained registration is registered again as critical.
	if err := g.SetCritical(context.Background(), "draining"); err != nil {
		t.Fatal(err)
	}
	if e := a.next(t); e != "update-critical" {
		t.Fatalf("SetCritical sent %q", e)
	}
	a.mu.Lock()
	a.forgetful = true
	a.mu.Unlock()
	for e := a.next(t); e != "register"; e = a.next(t) {
		if e != "update-404" {
			t.Fatalf("unexpected %q", e)
		}
	}
	a.mu.Lock()
	st := a.registered["orders-1"].Checks[0].Status
	a.mu.Unlock()
	if st != api.HealthCritical {
		t.Fatalf("re-registered drained instance as %q, want critical", st)
	}
	if e := a.next(t); e != "update-critical" {
		t.Fatalf("heartbeat of a drained instance sent %q", e)
	}
}
