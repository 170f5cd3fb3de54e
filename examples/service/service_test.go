package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/activekit/activekit/discovery/consul"
	"github.com/activekit/activekit/health"
	"github.com/activekit/activekit/internal/testenv"
)

// baseEnv is the environment of an in-process instance on the test's Redis,
// under a key prefix of its own.
func baseEnv(t *testing.T, instanceID string) map[string]string {
	t.Helper()
	return map[string]string{
		"ACTIVEKIT_INSTANCE_ID":     instanceID,
		"ACTIVEKIT_LISTEN":          "127.0.0.1:0",
		"ACTIVEKIT_REDIS_ADDR":      testenv.RedisAddr(t),
		"ACTIVEKIT_INSECURE_COOKIE": "true",
		"ACTIVEKIT_DRAIN_DELAY":     "10ms",
	}
}

// sessionPrefix gives the test a Redis key prefix, removed at its end.
func sessionPrefix(t *testing.T, env ...map[string]string) {
	t.Helper()
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, testenv.Redis(t), prefix)
	for _, e := range env {
		e["ACTIVEKIT_SESSION_PREFIX"] = prefix
	}
}

// One user, two instances: the count goes on whichever instance serves the
// request, and concurrent requests on both lose no visit.
//
// A visit that lost every compare-and-set attempt would get a 503 (an error
// the client sees, never a silent loss); session.Update backs off between
// attempts, so with two clients hammering one session none should give up.
func TestVisitsAcrossInstances(t *testing.T) {
	envA, envB := baseEnv(t, "svc-a"), baseEnv(t, "svc-b")
	sessionPrefix(t, envA, envB)
	a, b := startInstance(t, envA), startInstance(t, envB)
	c := newClient(t)
	waitReady(t, c, a.base)
	waitReady(t, c, b.base)

	for i := 1; i <= 10; i++ {
		in, want := a, "svc-a"
		if i%2 == 0 {
			in, want = b, "svc-b"
		}
		v := visit(t, c, in.base)
		if v.Visits != i || v.Instance != want {
			t.Fatalf("visit %d: %+v, want %d visits from %s", i, v, i, want)
		}
	}

	// The same session from two goroutines on two instances at once: a
	// compare-and-set per visit, so no visit is lost. A visit either
	// counts (200) or, when its compare-and-set lost every attempt, fails
	// with a 503 the client sees; it is never answered 200 and dropped.
	const perInstance = 50
	var (
		wg         sync.WaitGroup
		mu         sync.Mutex
		ok, gaveUp int
	)
	for _, in := range []*instance{a, b} {
		wg.Go(func() {
			for range perInstance {
				resp, err := c.Get(in.base + "/visits")
				if err != nil {
					t.Errorf("concurrent visit: %v", err)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				switch resp.StatusCode {
				case http.StatusOK:
					ok++
				case http.StatusServiceUnavailable:
					gaveUp++
				default:
					t.Errorf("concurrent visit: %s", resp.Status)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	conflicts := 0
	for _, in := range []*instance{a, b} {
		for _, l := range in.log.errors() {
			if l["msg"] == "counting a visit" && strings.Contains(fmt.Sprint(l["error"]), "conflict") {
				conflicts++
			} else {
				t.Errorf("%s: unexpected error log %v", in.base, l)
			}
		}
	}
	if conflicts != gaveUp {
		t.Errorf("%d visits answered 503, %d logged a compare-and-set conflict", gaveUp, conflicts)
	}
	if gaveUp != 0 {
		t.Errorf("%d of %d concurrent visits ran out of compare-and-set attempts", gaveUp, 2*perInstance)
	}
	t.Logf("concurrent visits on one session: %d counted, %d gave up after the compare-and-set attempts", ok, gaveUp)
	want := 10 + ok + 1
	if v := visit(t, c, a.base); v.Visits != want {
		t.Errorf("after %d counted concurrent visits: %d, want %d", ok, v.Visits, want)
	}

	// Readiness: both pass, on the same configuration.
	hashes := map[string]bool{}
	for _, in := range []*instance{a, b} {
		code, r := healthOf(t, c, in.base+"/readyz")
		if code != http.StatusOK || r.Status != health.StatusPass {
			t.Errorf("%s/readyz: %d %s:%s", in.base, code, r.Status, fmtChecks(r))
		}
		for _, name := range []string{"redis:ping", "config:status"} {
			if cs := r.Checks[name]; len(cs) != 1 || cs[0].Status != health.StatusPass {
				t.Errorf("%s/readyz: check %s: %+v", in.base, name, cs)
			}
		}
		if r.ConfigHash == "" {
			t.Errorf("%s/readyz: no configHash", in.base)
		}
		hashes[r.ConfigHash] = true
		for _, view := range []string{"/livez", "/startupz"} {
			if code, r := healthOf(t, c, in.base+view); code != http.StatusOK {
				t.Errorf("%s%s: %d %s", in.base, view, code, r.Status)
			}
		}
	}
	if len(hashes) != 1 {
		t.Errorf("two instances on one configuration report hashes %v", hashes)
	}

	// One instance goes; the session stays.
	if err := a.stop(); err != nil {
		t.Fatalf("stopping a: %v", err)
	}
	if v := visit(t, c, b.base); v.Visits != want+1 {
		t.Errorf("after a stopped: %+v, want %d visits", v, want+1)
	}
}

// Redis down: the instance is alive (no restart would help) but not ready,
// and a visit fails closed with 503 instead of starting a fresh session.
func TestRedisDown(t *testing.T) {
	dead := testenv.FreeAddr(t)
	env := baseEnv(t, "svc-down")
	env["ACTIVEKIT_REDIS_ADDR"] = dead
	in := startInstance(t, env)
	c := newClient(t)

	eventually(t, 5*time.Second, "startup", func() bool {
		code, _ := get(t, c, in.base+"/startupz")
		return code == http.StatusOK
	})
	if code, r := healthOf(t, c, in.base+"/livez"); code != http.StatusOK {
		t.Errorf("/livez with Redis down: %d %s", code, r.Status)
	}
	code, r := healthOf(t, c, in.base+"/readyz")
	if code != http.StatusServiceUnavailable || r.Checks["redis:ping"][0].Status != health.StatusFail {
		t.Errorf("/readyz with Redis down: %d:%s", code, fmtChecks(r))
	}
	if code, body := get(t, c, in.base+"/visits"); code != http.StatusServiceUnavailable {
		t.Errorf("/visits with Redis down: %d %s", code, body)
	}
	if err := in.stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
}

// On stop, readiness fails at once while requests are still served for the
// drain delay; then run returns nil.
func TestDrain(t *testing.T) {
	env := baseEnv(t, "svc-drain")
	sessionPrefix(t, env)
	env["ACTIVEKIT_DRAIN_DELAY"] = "1s"
	in := startInstance(t, env)
	c := newClient(t)
	waitReady(t, c, in.base)

	stopped := make(chan error, 1)
	go func() { stopped <- in.stop() }()
	eventually(t, 2*time.Second, "readiness fails on stop", func() bool {
		code, _ := get(t, c, in.base+"/readyz")
		return code == http.StatusServiceUnavailable
	})
	code, r := healthOf(t, c, in.base+"/readyz")
	if code != http.StatusServiceUnavailable || r.Status != health.StatusFail {
		t.Errorf("/readyz while draining: %d %s %q", code, r.Status, r.Output)
	}
	// Still serving while the load balancer takes the instance out.
	if v := visit(t, c, in.base); v.Visits != 1 {
		t.Errorf("visit while draining: %+v", v)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("run after drain: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after the drain")
	}
	if _, err := c.Get(in.base + "/visits"); err == nil {
		t.Error("instance still serves after run returned")
	}
	for _, msg := range []string{"health: stopping", "health: shutting down servers", "health: stopped"} {
		if !in.log.has(msg, nil) {
			t.Errorf("no %q in the log", msg)
		}
	}
}

// Configuration errors stop run before it serves, with an error that says
// what is wrong.
func TestRunRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
		is   error
	}{
		{name: "help", args: []string{"-h"}, is: flag.ErrHelp},
		{name: "unknown flag", args: []string{"-nope"}, want: "flag provided but not defined"},
		{name: "stray argument", args: []string{"extra"}, want: "unexpected arguments"},
		{name: "bad listen", env: map[string]string{"ACTIVEKIT_LISTEN": "8080"}, want: "listen"},
		{name: "bad duration", args: []string{"-drain-delay", "soon"}, want: "drain_delay"},
		{name: "bad log level", env: map[string]string{"ACTIVEKIT_LOG_LEVEL": "loud"}, want: "log_level"},
		{name: "grace period too short", args: []string{"-listen", "127.0.0.1:0", "-drain-delay", "25s"}, is: health.ErrInvalidLifecycle},
		{name: "port in use", want: "address already in use"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := tc.env
			if env == nil {
				env = map[string]string{}
			}
			if tc.name == "port in use" {
				l, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = l.Close() })
				env["ACTIVEKIT_LISTEN"] = l.Addr().String()
			}
			var out strings.Builder
			err := run(t.Context(), tc.args, func(k string) string { return env[k] }, &syncBuilder{b: &out})
			switch {
			case err == nil:
				t.Fatalf("run: nil error; output %s", out.String())
			case tc.is != nil && !errors.Is(err, tc.is):
				t.Errorf("run: %v, want %v", err, tc.is)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Errorf("run: %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// Flags win over the environment, which wins over the defaults.
func TestConfigPrecedence(t *testing.T) {
	flags, err := parseFlags([]string{"-greeting", "from-flag", "-insecure-cookie"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"ACTIVEKIT_GREETING": "from-env", "ACTIVEKIT_DRAIN_DELAY": "2s", "ACTIVEKIT_UNRELATED": "x"}
	store, client, err := loadConfig(t.Context(), "visits", flags, func(k string) string { return env[k] }, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if client != nil {
		t.Error("a Consul client without a Consul address")
	}
	c := store.Load()
	if c.Greeting != "from-flag" || c.DrainDelay != 2*time.Second || !c.InsecureCookie || c.Listen != defaults().Listen {
		t.Errorf("config %+v", c)
	}
}

type syncBuilder struct {
	mu sync.Mutex
	b  *strings.Builder
}

func (s *syncBuilder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// With a Consul address: configuration from Consul KV, followed at run
// time; registration with a TTL and a readiness check; critical as soon as
// the drain starts; deregistered once stopped.
func TestConsul(t *testing.T) {
	cc := testenv.Consul(t)
	name := testenv.Name(t)
	prefix := name + "/config"
	testenv.CleanupConsulKV(t, cc, name+"/")
	put := func(key, value string) {
		t.Helper()
		if _, err := cc.KV().Put(&api.KVPair{Key: prefix + "/" + key, Value: []byte(value)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	put("greeting", "hello from consul")

	env := baseEnv(t, name+"-0")
	sessionPrefix(t, env)
	env["OTEL_SERVICE_NAME"] = name
	env["ACTIVEKIT_CONSUL_ADDR"] = testenv.ConsulAddr(t)
	env["ACTIVEKIT_CONSUL_PREFIX"] = prefix
	env["ACTIVEKIT_DRAIN_DELAY"] = "1s"
	in := startInstance(t, env)
	c := newClient(t)
	waitReady(t, c, in.base)

	greeting := func() string {
		_, body := get(t, c, in.base+"/")
		var m map[string]string
		_ = json.Unmarshal(body, &m)
		return m["greeting"]
	}
	if g := greeting(); g != "hello from consul" {
		t.Errorf("greeting %q, want the one in Consul", g)
	}
	code, r := healthOf(t, c, in.base+"/readyz")
	if code != http.StatusOK || r.Checks["consul:leader"][0].Status != health.StatusPass {
		t.Errorf("/readyz: %d:%s", code, fmtChecks(r))
	}

	// Registered, passing, with the readiness URL as its HTTP check.
	checks := func() map[string]*api.AgentCheck {
		all, err := cc.Agent().ChecksWithFilter("ServiceID == " + `"` + name + `-0"`)
		if err != nil {
			t.Fatal(err)
		}
		return all
	}
	eventually(t, 5*time.Second, "registered", func() bool { return len(checks()) == 2 })
	// The HTTP check starts critical and passes once the agent has probed
	// /readyz (within one HTTPCheckInterval, 5 s by default).
	eventually(t, 15*time.Second, "both checks passing", func() bool {
		for _, ch := range checks() {
			if ch.Status != api.HealthPassing {
				return false
			}
		}
		return true
	})

	// The catalog's config hash is the one /readyz reports.
	catalogHash := func() string {
		entries, _, err := cc.Health().Service(name, "", false, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Service.ID == name+"-0" {
				return e.Service.Meta[consul.MetaConfigHash]
			}
		}
		return ""
	}
	readyHash := func() string {
		_, r := healthOf(t, c, in.base+"/readyz")
		return r.ConfigHash
	}
	booted := readyHash()
	if h := catalogHash(); h == "" || h != booted {
		t.Errorf("catalog config hash %q, /readyz %q", h, booted)
	}

	// A change in Consul reaches the running instance, and the catalog
	// shows its new hash, the instance still passing.
	put("greeting", "changed")
	eventually(t, 5*time.Second, "greeting follows Consul", func() bool { return greeting() == "changed" })
	changed := readyHash()
	if changed == booted {
		t.Fatalf("/readyz config hash %q unchanged by a change", changed)
	}
	eventually(t, 5*time.Second, "catalog config hash follows Consul", func() bool { return catalogHash() == changed })
	for id, ch := range checks() {
		if ch.Status != api.HealthPassing {
			t.Errorf("check %s %s after the config hash update, want passing", id, ch.Status)
		}
	}
	// So does the log level: at debug, a visit logs a line.
	if in.log.has("visit", nil) {
		t.Fatal("a debug line logged at the info level")
	}
	put("log_level", "debug")
	eventually(t, 5*time.Second, "log level follows Consul", func() bool {
		visit(t, c, in.base)
		return in.log.has("visit", nil)
	})

	// A change of a boot-only key is refused: the instance keeps its
	// configuration and stays ready, with a warning.
	put("consul_ttl", "30s") // not overridden by the environment
	eventually(t, 5*time.Second, "restart-only change refused", func() bool {
		_, r := healthOf(t, c, in.base+"/readyz")
		return r.Checks["config:status"][0].Status == health.StatusWarn
	})
	if code, r := healthOf(t, c, in.base+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after a refused change: %d:%s", code, fmtChecks(r))
	}
	eventually(t, 5*time.Second, "catalog config hash after the log level change and a refused one", func() bool {
		return catalogHash() == readyHash()
	})

	// Stop: critical in Consul while still serving, then gone.
	stopped := make(chan error, 1)
	go func() { stopped <- in.stop() }()
	eventually(t, 2*time.Second, "TTL check critical on drain", func() bool {
		ch := checks()["activekit:"+name+"-0:ttl"]
		return ch != nil && ch.Status == api.HealthCritical
	})
	if err := <-stopped; err != nil {
		t.Errorf("stop: %v", err)
	}
	if svcs, err := cc.Agent().ServicesWithFilter("ID == " + `"` + name + `-0"`); err != nil || len(svcs) != 0 {
		t.Errorf("after stop: services %v, %v; want deregistered", svcs, err)
	}
}

// A request carrying a W3C traceparent is traced by the middleware, and the
// service's log lines about it carry its trace ID and the instance's.
func TestTraceIDInLogs(t *testing.T) {
	env := baseEnv(t, "svc-trace")
	sessionPrefix(t, env)
	env["ACTIVEKIT_LOG_LEVEL"] = "debug"
	in := startInstance(t, env)
	c := newClient(t)
	waitReady(t, c, in.base)

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	req, err := http.NewRequest(http.MethodGet, in.base+"/visits", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /visits: %s", resp.Status)
	}
	want := map[string]any{"trace_id": traceID, "service.instance.id": "svc-trace", "service.name": defaultServiceName, "visits": float64(1)}
	if !in.log.has("visit", want) {
		t.Errorf("no log line %q with %v", "visit", want)
	}
}
