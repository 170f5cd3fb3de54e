package consul_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/consul"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/hashicorp/consul/api"
)

// catalogMeta returns the instance's Meta as the health API (the catalog,
// passing or not) shows it, and its checks by ID.
func catalogMeta(t *testing.T, c *api.Client, service, id string) (map[string]string, map[string]*api.HealthCheck) {
	t.Helper()
	entries, _, err := c.Health().Service(service, "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Service.ID == id {
			checks := map[string]*api.HealthCheck{}
			for _, chk := range e.Checks {
				checks[chk.CheckID] = chk
			}
			return e.Service.Meta, checks
		}
	}
	return nil, nil
}

// waitMeta polls the catalog until the instance's Meta key has want.
func waitMeta(t *testing.T, c *api.Client, service, id, key, want string, within time.Duration) map[string]*api.HealthCheck {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		meta, checks := catalogMeta(t, c, service, id)
		if meta[key] == want {
			return checks
		}
		if time.Now().After(deadline) {
			t.Fatalf("catalog meta %s of %s is %q after %v, want %q (meta %v)", key, id, meta[key], within, want, meta)
		}
		time.Sleep(20 * time.Millisecond) //nolint:forbidigo // polling the catalog
	}
}

// TestSetMeta changes the config hash of a running instance: the catalog
// and a watch show the new hash, everything else is kept (address, port,
// tags, the version), and the checks keep their status: the TTL check
// passing, the HTTP check of an unready instance critical (the payload
// says passing; the agent keeps the status of a check it already has).
func TestSetMeta(t *testing.T) {
	c := testenv.Consul(t)
	service := testenv.Name(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	reg := newRegistry(t, c, consul.RegistryConfig{
		// A heartbeat every 10s: what the catalog shows within 5s, SetMeta sent.
		TTL: 30 * time.Second, Version: "1.2.3", ConfigHash: "h1",
		HTTPCheck: srv.URL + "/readyz", HTTPCheckInterval: time.Minute,
	})
	id := service + "-1"
	g := register(t, reg, instance(service, id, 9001))
	httpID := "activekit:" + id + ":http"
	checks := waitMeta(t, c, service, id, consul.MetaConfigHash, "h1", 5*time.Second)
	if checks[g.CheckID()].Status != api.HealthPassing || checks[httpID].Status != api.HealthCritical {
		t.Fatalf("checks before SetMeta: ttl %+v http %+v", checks[g.CheckID()], checks[httpID])
	}

	if err := g.SetMeta(context.Background(), consul.MetaConfigHash, "h2"); err != nil {
		t.Fatal(err)
	}
	if got := g.Instance().Meta[consul.MetaConfigHash]; got != "h2" {
		t.Fatalf("Instance().Meta config hash %q, want h2", got)
	}
	checks = waitMeta(t, c, service, id, consul.MetaConfigHash, "h2", 5*time.Second)
	if s := checks[g.CheckID()].Status; s != api.HealthPassing {
		t.Fatalf("TTL check %q after SetMeta, want passing", s)
	}
	if s := checks[httpID].Status; s != api.HealthCritical {
		t.Fatalf("HTTP check of an unready instance %q after SetMeta, want critical", s)
	}
	svc, _, err := c.Agent().Service(id, nil)
	if err != nil {
		t.Fatal(err)
	}
	if svc.Address != "127.0.0.1" || svc.Port != 9001 || len(svc.Tags) != 1 || svc.Tags[0] != "v1" ||
		svc.Meta[consul.MetaVersion] != "1.2.3" || svc.Meta[consul.MetaConfigHash] != "h2" {
		t.Fatalf("service after SetMeta: %+v", svc)
	}

	// An empty value removes the key; a bad key changes nothing.
	if err := g.SetMeta(context.Background(), "zone", "a"); err != nil {
		t.Fatal(err)
	}
	waitMeta(t, c, service, id, "zone", "a", 5*time.Second)
	if err := g.SetMeta(context.Background(), "zone", ""); err != nil {
		t.Fatal(err)
	}
	waitMeta(t, c, service, id, "zone", "", 5*time.Second)
	for _, key := range []string{"", "consul-x", "a b"} {
		if err := g.SetMeta(context.Background(), key, "v"); !errors.Is(err, discovery.ErrInvalidInstance) {
			t.Errorf("SetMeta(%q): %v, want ErrInvalidInstance", key, err)
		}
	}
}

// TestSetMetaKeepsDrain: a drained instance stays critical, with its
// note, through SetMeta, and through the heartbeats after it.
func TestSetMetaKeepsDrain(t *testing.T) {
	c := testenv.Consul(t)
	service := testenv.Name(t)
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: time.Second, ConfigHash: "h1"})
	id := service + "-1"
	g := register(t, reg, instance(service, id, 9001))
	if err := g.Drain(context.Background(), "draining"); err != nil {
		t.Fatal(err)
	}
	if err := g.SetMeta(context.Background(), consul.MetaConfigHash, "h2"); err != nil {
		t.Fatal(err)
	}
	for range 3 { // across several heartbeats (TTL/3)
		checks := waitMeta(t, c, service, id, consul.MetaConfigHash, "h2", 5*time.Second)
		if chk := checks[g.CheckID()]; chk == nil || chk.Status != api.HealthCritical || chk.Output != "draining" {
			t.Fatalf("TTL check of a drained instance after SetMeta: %+v", chk)
		}
		time.Sleep(400 * time.Millisecond) //nolint:forbidigo // observing that nothing happens needs elapsed time
	}
}

// TestSetMetaAfterClose: SetMeta on a closed registration is refused with
// ErrClosed and registers nothing.
func TestSetMetaAfterClose(t *testing.T) {
	c := testenv.Consul(t)
	service := testenv.Name(t)
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: time.Second, ConfigHash: "h1"})
	id := service + "-1"
	g := register(t, reg, instance(service, id, 9001))
	if err := g.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	err := g.SetMeta(context.Background(), consul.MetaConfigHash, "h2")
	if !errors.Is(err, discovery.ErrClosed) {
		t.Fatalf("SetMeta after Close: %v, want ErrClosed", err)
	}
	t.Logf("SetMeta after Close: %v", err)
	if _, _, err := c.Agent().Service(id, nil); err == nil {
		t.Fatal("service registered with the agent after Close and SetMeta")
	}
}

// TestSetMetaAfterCloseFakeAgent: nothing at all reaches the agent after
// Close's deregistration.
func TestSetMetaAfterCloseFakeAgent(t *testing.T) {
	a, c := newFakeAgent(t)
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: time.Hour})
	g := register(t, reg, instance("orders", "orders-1", 9001))
	a.expect(t, "register")
	if err := g.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	a.expect(t, "deregister")
	if err := g.SetMeta(context.Background(), consul.MetaConfigHash, "h2"); !errors.Is(err, discovery.ErrClosed) {
		t.Fatalf("SetMeta after Close: %v, want ErrClosed", err)
	}
	a.quiet(t, "after Close")
}

// TestSetMetaKeptWhenAgentForgets: when the agent forgets the service (an
// operator deregistered it, or the agent restarted), the heartbeat
// registers it again with the Meta of the last SetMeta, not the first.
func TestSetMetaKeptWhenAgentForgets(t *testing.T) {
	c := testenv.Consul(t)
	service := testenv.Name(t)
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: time.Second, ConfigHash: "h1"})
	id := service + "-1"
	g := register(t, reg, instance(service, id, 9001))
	if err := g.SetMeta(context.Background(), consul.MetaConfigHash, "h2"); err != nil {
		t.Fatal(err)
	}
	waitMeta(t, c, service, id, consul.MetaConfigHash, "h2", 5*time.Second)
	if err := c.Agent().ServiceDeregister(id); err != nil {
		t.Fatal(err)
	}
	// The heartbeat (every TTL/3) sees the 404 and registers it again.
	deadline := time.Now().Add(5 * time.Second)
	for {
		svc, _, err := c.Agent().Service(id, nil)
		if err == nil {
			if got := svc.Meta[consul.MetaConfigHash]; got != "h2" {
				t.Fatalf("re-registered with config hash %q, want h2", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not registered again within 5s: %v", err)
		}
		time.Sleep(20 * time.Millisecond) //nolint:forbidigo // polling the agent
	}
	waitMeta(t, c, service, id, consul.MetaConfigHash, "h2", 5*time.Second)
}

// TestSetMetaSentByHeartbeat: a SetMeta whose ctx ended before it could
// write keeps the new value, and the next heartbeat sends it.
func TestSetMetaSentByHeartbeat(t *testing.T) {
	c := testenv.Consul(t)
	service := testenv.Name(t)
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: time.Second, ConfigHash: "h1"})
	id := service + "-1"
	g := register(t, reg, instance(service, id, 9001))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := g.SetMeta(ctx, consul.MetaConfigHash, "h2"); !errors.Is(err, context.Canceled) {
		t.Fatalf("SetMeta with an ended ctx: %v", err)
	}
	checks := waitMeta(t, c, service, id, consul.MetaConfigHash, "h2", 3*time.Second)
	if s := checks[g.CheckID()].Status; s != api.HealthPassing {
		t.Fatalf("TTL check %q after the heartbeat sent the meta, want passing", s)
	}
}

// TestSetMetaConcurrent runs SetMeta from several goroutines while the
// heartbeat beats every ~330ms and a SetCritical comes in the middle: run
// with -race. The catalog ends with the last value, and critical.
func TestSetMetaConcurrent(t *testing.T) {
	c := testenv.Consul(t)
	service := testenv.Name(t)
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: time.Second, ConfigHash: "h0"})
	id := service + "-1"
	g := register(t, reg, instance(service, id, 9001))
	var wg sync.WaitGroup
	stop := time.Now().Add(1500 * time.Millisecond)
	for w := range 4 {
		wg.Go(func() {
			for i := 0; time.Now().Before(stop); i++ {
				if err := g.SetMeta(context.Background(), fmt.Sprintf("k%d", w), fmt.Sprint(i)); err != nil {
					t.Error(err)
					return
				}
				_ = g.Instance()
			}
		})
	}
	time.Sleep(500 * time.Millisecond) //nolint:forbidigo // let SetMeta and heartbeats overlap
	if err := g.SetCritical(context.Background(), "draining"); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := g.SetMeta(context.Background(), consul.MetaConfigHash, "last"); err != nil {
		t.Fatal(err)
	}
	checks := waitMeta(t, c, service, id, consul.MetaConfigHash, "last", 5*time.Second)
	if s := checks[g.CheckID()].Status; s != api.HealthCritical {
		t.Fatalf("TTL check %q, want critical", s)
	}
	meta, _ := catalogMeta(t, c, service, id)
	for k, v := range g.Instance().Meta {
		if meta[k] != v {
			t.Errorf("catalog meta %s=%q, registration has %q", k, meta[k], v)
		}
	}
}

// TestSetMetaSameValueSendsNothing: SetMeta with the value the agent
// already has sends nothing; a new value sends one registration carrying
// it.
func TestSetMetaSameValueSendsNothing(t *testing.T) {
	a, c := newFakeAgent(t)
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: time.Hour, ConfigHash: "h1"}) // no heartbeat
	g := register(t, reg, instance("orders", "orders-1", 9001))
	a.expect(t, "register")
	for _, value := range []string{"h1", "h2", "h2"} {
		if err := g.SetMeta(context.Background(), consul.MetaConfigHash, value); err != nil {
			t.Fatal(err)
		}
	}
	a.expect(t, "register")
	a.mu.Lock()
	got := a.registered["orders-1"].Meta[consul.MetaConfigHash]
	a.mu.Unlock()
	if got != "h2" {
		t.Fatalf("agent has config hash %q, want h2", got)
	}
	a.quiet(t, "by a SetMeta of the value the agent has")
}

// TestSetMetaRefusesConsulLimits: a value over 512 bytes, or a 65th pair,
// is refused with ErrInvalidInstance, changes nothing and sends nothing.
func TestSetMetaRefusesConsulLimits(t *testing.T) {
	a, c := newFakeAgent(t)
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: time.Hour}) // no heartbeat
	g := register(t, reg, instance("orders", "orders-1", 9001))
	a.expect(t, "register")
	if err := g.SetMeta(context.Background(), "big", strings.Repeat("x", 513)); !errors.Is(err, discovery.ErrInvalidInstance) {
		t.Fatalf("SetMeta of a 513-byte value: %v, want ErrInvalidInstance", err)
	}
	for i := len(g.Instance().Meta); i < 64; i++ {
		if err := g.SetMeta(context.Background(), fmt.Sprintf("k%d", i), "v"); err != nil {
			t.Fatalf("pair %d: %v", i+1, err)
		}
		a.expect(t, "register")
	}
	if err := g.SetMeta(context.Background(), "one-more", "v"); !errors.Is(err, discovery.ErrInvalidInstance) {
		t.Fatalf("SetMeta of a 65th pair: %v, want ErrInvalidInstance", err)
	}
	meta := g.Instance().Meta
	if _, ok := meta["one-more"]; ok || len(meta) != 64 || meta["big"] != "" {
		t.Fatalf("Meta after refused changes: %d pairs, one-more %v, big %q", len(meta), ok, meta["big"])
	}
	a.quiet(t, "by a refused SetMeta")
}
