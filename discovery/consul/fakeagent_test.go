package consul_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery"
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
	// gate, when set, is called with each request's event name
	// ("register", "update-passing", "update-critical", "deregister")
	// before the request is applied, without a.mu held: it may block to
	// delay the request. A request whose client gave up meanwhile is not
	// applied, unless stubborn is set.
	gate func(event string, r *http.Request)
	// stubborn applies a request whose client gave up while it was held,
	// as a real agent does: its handlers do not watch the connection.
	stubborn bool
	// applied, when set, is called with each event after it was applied,
	// without a.mu held.
	applied func(event string)
}

// setGate sets a.gate.
func (a *fakeAgent) setGate(gate func(event string, r *http.Request)) {
	a.mu.Lock()
	a.gate = gate
	a.mu.Unlock()
}

// statuses returns the statuses of the check updates applied so far.
func (a *fakeAgent) statuses() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.updates...)
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
	body, _ := io.ReadAll(r.Body)
	var event string
	var u struct{ Status, Output string }
	switch {
	case r.URL.Path == "/v1/agent/service/register":
		event = "register"
	case strings.HasPrefix(r.URL.Path, "/v1/agent/check/update/"):
		_ = json.Unmarshal(body, &u)
		event = "update-" + u.Status
	case strings.HasPrefix(r.URL.Path, "/v1/agent/service/deregister/"):
		event = "deregister"
	}
	a.mu.Lock()
	gate := a.gate
	a.mu.Unlock()
	if gate != nil && event != "" {
		gate(event, r)
		a.mu.Lock()
		stubborn := a.stubborn
		a.mu.Unlock()
		if r.Context().Err() != nil && !stubborn {
			return
		}
	}
	a.apply(w, r, body, u)
	a.mu.Lock()
	applied := a.applied
	a.mu.Unlock()
	if applied != nil && event != "" {
		applied(event)
	}
}

func (a *fakeAgent) apply(w http.ResponseWriter, r *http.Request, body []byte, u struct{ Status, Output string }) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case r.URL.Path == "/v1/agent/service/register":
		var reg api.AgentServiceRegistration
		if err := json.Unmarshal(body, &reg); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		a.registered[reg.ID] = reg
		a.forgetful = false
		a.events <- "register"
	case strings.HasPrefix(r.URL.Path, "/v1/agent/check/update/"):
		// Check IDs are "activekit:<service ID>:ttl".
		id := strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, "/v1/agent/check/update/"), "activekit:"), ":ttl")
		if _, ok := a.registered[id]; a.forgetful || !ok {
			http.Error(w, `Unknown check ID "x". Ensure that the check ID is passed, not the check name.`, http.StatusNotFound)
			a.events <- "update-404"
			return
		}
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

// expect fails t unless the next request the agent receives is want.
func (a *fakeAgent) expect(t *testing.T, want string) {
	t.Helper()
	if e := a.next(t); e != want {
		t.Fatalf("the agent received %q, want %q", e, want)
	}
}

// quiet fails t if the agent has received a request not yet taken by next:
// what after names the step that should have sent nothing.
func (a *fakeAgent) quiet(t *testing.T, after string) {
	t.Helper()
	select {
	case e := <-a.events:
		t.Fatalf("%q sent %s", e, after)
	default:
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
	a.expect(t, "register")
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
	a.expect(t, "update-passing")
	if err := g.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	a.expect(t, "deregister")
}

// TestReregisterWhenAgentForgets: an agent that answers a heartbeat with 404
// (it lost its state) gets the service registered again, in the status the
// registration was in.
func TestReregisterWhenAgentForgets(t *testing.T) {
	a, c := newFakeAgent(t)
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: time.Second})
	g := register(t, reg, instance("orders", "orders-1", 9001))
	a.expect(t, "register")
	a.expect(t, "update-passing")
	a.forget("orders-1")
	a.expect(t, "update-404")
	a.expect(t, "register")
	a.expect(t, "update-passing")

	// A drained registration is registered again as critical.
	if err := g.SetCritical(context.Background(), "draining"); err != nil {
		t.Fatal(err)
	}
	a.expect(t, "update-critical")
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
	a.expect(t, "update-critical")
}

// TestDrainNotUndoneByHeartbeat: a heartbeat that read "passing" and is in
// flight when SetCritical is called must not land after SetCritical's
// update and turn the drained instance passing again (until the next
// heartbeat, TTL/3 later, while the load balancer keeps sending it traffic).
func TestDrainNotUndoneByHeartbeat(t *testing.T) {
	a, c := newFakeAgent(t)
	held := make(chan struct{})
	critical := make(chan struct{})
	var holdOnce, criticalOnce sync.Once
	a.setGate(func(event string, _ *http.Request) {
		switch event {
		case "update-passing":
			first := false
			holdOnce.Do(func() { first = true })
			if first {
				close(held)
				// Hold the heartbeat until SetCritical's update
				// arrives; a serialised SetCritical never comes
				// while it is held, hence the bound.
				select {
				case <-critical:
				case <-time.After(300 * time.Millisecond):
				}
			}
		case "update-critical":
			criticalOnce.Do(func() { close(critical) })
		}
	})
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: time.Second})
	g := register(t, reg, instance("orders", "orders-1", 9001))
	<-held
	if err := g.SetCritical(context.Background(), "draining"); err != nil {
		t.Fatal(err)
	}
	// Wait until the held heartbeat has been applied too.
	for seen := false; !seen; {
		for _, s := range a.statuses() {
			seen = seen || s == api.HealthPassing
		}
		if !seen {
			a.next(t)
		}
	}
	st := a.statuses()
	k := slices.Index(st, api.HealthCritical)
	if k < 0 || slices.Contains(st[k:], api.HealthPassing) {
		t.Fatalf("check updates %v: a passing heartbeat landed after SetCritical", st)
	}
}

// TestSetCriticalRacingClose: a SetCritical whose update reaches the agent
// after Close deregistered the service must not register it again (a
// zombie registration that lingers until DeregisterCriticalAfter).
func TestSetCriticalRacingClose(t *testing.T) {
	a, c := newFakeAgent(t)
	held := make(chan struct{})
	dereg := make(chan struct{})
	var holdOnce, deregOnce sync.Once
	a.setGate(func(event string, _ *http.Request) {
		switch event {
		case "update-critical":
			first := false
			holdOnce.Do(func() { first = true })
			if first {
				close(held)
				select {
				case <-dereg:
				case <-time.After(300 * time.Millisecond):
				}
			}
		case "deregister":
			deregOnce.Do(func() { close(dereg) })
		}
	})
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: 3 * time.Second})
	g := register(t, reg, instance("orders", "orders-1", 9001))
	done := make(chan error, 1)
	go func() { done <- g.SetCritical(context.Background(), "draining") }()
	<-held
	if err := g.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil && !errors.Is(err, discovery.ErrClosed) {
		t.Fatalf("SetCritical: %v", err)
	}
	a.mu.Lock()
	_, zombie := a.registered["orders-1"]
	a.mu.Unlock()
	if zombie {
		t.Fatal("the instance is registered again after Close")
	}
}

// TestHeartbeatHungAgent: an agent that accepts a heartbeat and never
// answers must not stall the heartbeat: each update is bounded, and the
// next one follows.
func TestHeartbeatHungAgent(t *testing.T) {
	a, c := newFakeAgent(t)
	updates := make(chan struct{}, 100)
	var hangOnce sync.Once
	a.setGate(func(event string, r *http.Request) {
		if event != "update-passing" {
			return
		}
		updates <- struct{}{}
		hangOnce.Do(func() { <-r.Context().Done() }) // the first one hangs until the client gives up
	})
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: time.Second})
	register(t, reg, instance("orders", "orders-1", 9001))
	for k := range 2 {
		select {
		case <-updates:
		case <-time.After(5 * time.Second):
			t.Fatalf("heartbeat %d not sent within 5s (TTL 1s): stalled on a hung request", k+1)
		}
	}
}

// TestHeartbeatJitter: the heartbeat interval is TTL/3 less up to 10%: never
// longer (the check must not lapse) and not always the same (instances
// started together must not beat together).
func TestHeartbeatJitter(t *testing.T) {
	const period = 5 * time.Second
	seen := map[time.Duration]bool{}
	for range 100 {
		d := consul.Jitter(period)
		if d > period || d < period*9/10 {
			t.Fatalf("interval %v outside [%v, %v]", d, period*9/10, period)
		}
		seen[d] = true
	}
	if len(seen) < 10 {
		t.Fatalf("%d distinct intervals in 100, want jitter", len(seen))
	}
}

// TestCloseRacingReregistration: the agent lost the service (restarted) and
// the heartbeat is registering it again when Close is called. An agent
// applies a request whose client gave up, so the registration must not be
// abandoned in flight and land after Close's deregistration: the instance
// would be back in the agent, passing until its TTL lapses and registered
// until DeregisterCriticalAfter, after the process has stopped.
func TestCloseRacingReregistration(t *testing.T) {
	a, c := newFakeAgent(t)
	holdNextRegistration := a.applyAbandoned()
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: time.Second})
	g := register(t, reg, instance("orders", "orders-1", 9001))
	a.expect(t, "register")
	held := holdNextRegistration()
	a.forget("orders-1")
	<-held
	if err := g.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a.registeredAfterBoth(t, "orders-1") {
		t.Fatal("instance registered at the agent after Close: a re-registration in flight landed after the deregistration")
	}
}

// TestSetCriticalReregistrationNotAbandoned: a SetCritical that finds the
// agent has forgotten the service registers it again; if its caller's ctx
// ends while that registration is in flight, the registration must not be
// abandoned (the agent applies it all the same) and land after Close's
// deregistration, leaving a stopped instance registered.
func TestSetCriticalReregistrationNotAbandoned(t *testing.T) {
	a, c := newFakeAgent(t)
	holdNextRegistration := a.applyAbandoned()
	// A long TTL: no heartbeat during the test.
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: 30 * time.Second})
	g := register(t, reg, instance("orders", "orders-1", 9001))
	a.expect(t, "register")
	held := holdNextRegistration()
	a.forget("orders-1")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.SetCritical(ctx, "draining") }()
	<-held
	cancel()
	if err := g.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-done
	if a.registeredAfterBoth(t, "orders-1") {
		t.Fatal("the instance is registered after Close: SetCritical's abandoned registration landed after the deregistration")
	}
}

// forget makes a forget the service id, as a restarted agent does: check
// updates are answered 404 until the next registration.
func (a *fakeAgent) forget(id string) {
	a.mu.Lock()
	a.forgetful = true
	delete(a.registered, id)
	a.mu.Unlock()
}

// registeredAfterBoth waits until a has applied both a registration (a held
// one is applied when its hold ends, even if abandoned) and a
// deregistration, in some order, and reports whether id is registered then.
func (a *fakeAgent) registeredAfterBoth(t *testing.T, id string) bool {
	t.Helper()
	for reregistered, deregistered := false, false; !reregistered || !deregistered; {
		switch a.next(t) {
		case "register":
			reregistered = true
		case "deregister":
			deregistered = true
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.registered[id]
	return ok
}

// applyAbandoned makes a apply requests whose client gave up, as a real
// agent does, and returns holdNextRegistration: it makes the agent hold the
// next registration it receives until a deregistration has been applied
// (at most 300ms: a Close that waits for the registration never sends one
// meanwhile), and returns a channel closed when that registration arrives.
func (a *fakeAgent) applyAbandoned() (holdNextRegistration func() <-chan struct{}) {
	deregApplied := make(chan struct{})
	var deregOnce sync.Once
	a.mu.Lock()
	a.stubborn = true
	a.applied = func(event string) {
		if event == "deregister" {
			deregOnce.Do(func() { close(deregApplied) })
		}
	}
	a.mu.Unlock()
	return func() <-chan struct{} {
		held := make(chan struct{})
		var holdOnce sync.Once
		a.setGate(func(event string, _ *http.Request) {
			if event != "register" {
				return
			}
			first := false
			holdOnce.Do(func() { first = true })
			if first {
				close(held)
				select {
				case <-deregApplied:
				case <-time.After(300 * time.Millisecond):
				}
			}
		})
		return held
	}
}

// TestRegisterEndedContextSendsNothing: Register with a context already
// ended returns its error and sends nothing: no registration, and no
// deregistration to withdraw one that was never sent.
func TestRegisterEndedContextSendsNothing(t *testing.T) {
	a, c := newFakeAgent(t)
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	g, err := reg.RegisterInstance(ctx, instance("orders", "orders-1", 9001))
	if err == nil {
		_ = g.Close(context.Background())
		t.Fatal("Register with an ended context succeeded")
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Register = %v, want context.Canceled", err)
	}
	// A withdrawal would be sent and answered before Register returns.
	a.quiet(t, "by a Register whose context had ended")
}
