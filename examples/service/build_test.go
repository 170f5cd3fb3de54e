package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/activekit/activekit/health"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session"
)

// newService failing at each step returns an error that says which, and
// leaves nothing open: no goroutine (a Consul connection, the watch), no
// client.
func TestNewServiceFailsClean(t *testing.T) {
	cc := testenv.Consul(t)
	name := testenv.Name(t)
	prefix := name + "/config"
	testenv.CleanupConsulKV(t, cc, name+"/")
	badPrefix := name + "/bad"
	if _, err := cc.KV().Put(&api.KVPair{Key: badPrefix + "/log_level", Value: []byte("loud")}, nil); err != nil {
		t.Fatal(err)
	}
	errSessions := errors.New("no session store")
	failingSessions := func(redis.UniversalClient, Config) (session.Store, error) { return nil, errSessions }

	for _, tc := range []struct {
		name     string
		env      map[string]string
		sessions sessionStore
		want     []string // in the error
		is       error
	}{
		{name: "bad config", env: map[string]string{"ACTIVEKIT_LOG_LEVEL": "loud"}, want: []string{"configuration", "log_level"}},
		{name: "bad config in consul", env: map[string]string{"ACTIVEKIT_CONSUL_ADDR": testenv.ConsulAddr(t), "ACTIVEKIT_CONSUL_PREFIX": badPrefix}, want: []string{"configuration", "log_level"}},
		{name: "bad consul ttl", env: map[string]string{"ACTIVEKIT_CONSUL_TTL": "500ms"}, want: []string{"configuration", "consul_ttl 500ms is below 1s"}},
		{name: "shutdown longer than the grace period", env: map[string]string{"ACTIVEKIT_DRAIN_DELAY": "20s", "ACTIVEKIT_GRACE_PERIOD": "25s"},
			want: []string{"configuration", "exceeds the termination grace period 25s"}, is: health.ErrInvalidLifecycle},
		{name: "consul down", env: map[string]string{"ACTIVEKIT_CONSUL_ADDR": testenv.FreeAddr(t), "ACTIVEKIT_CONSUL_PREFIX": prefix}, want: []string{"configuration", "connection refused"}},
		{name: "bad telemetry", env: map[string]string{"ACTIVEKIT_CONSUL_ADDR": testenv.ConsulAddr(t), "ACTIVEKIT_CONSUL_PREFIX": prefix, "ACTIVEKIT_OTLP_ENDPOINT": "ftp://collector"}, want: []string{"observability", "otlp endpoint"}},
		{name: "sessions", env: map[string]string{"ACTIVEKIT_CONSUL_ADDR": testenv.ConsulAddr(t), "ACTIVEKIT_CONSUL_PREFIX": prefix}, sessions: failingSessions, is: errSessions},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := baseEnv(t, name)
			for k, v := range tc.env {
				env[k] = v
			}
			sessions := tc.sessions
			if sessions == nil {
				sessions = redisSessions
			}
			before := goleak.IgnoreCurrent()
			svc, err := newService(t.Context(), nil, func(k string) string { return env[k] }, io.Discard, sessions)
			if err == nil {
				_ = svc.Close()
				t.Fatal("newService: nil error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("newService: %v; want it to mention %q", err, w)
				}
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("newService: %v; want %v", err, tc.is)
			}
			goleak.VerifyNone(t, before)
		})
	}
}

// serve failing before it serves (the port is taken), or started with its
// context already ended, closes everything newService opened, the
// configuration watch and the Consul client included; a second serve
// refuses with errDone, and Close after it closes nothing twice.
func TestServeFailsClean(t *testing.T) {
	cc := testenv.Consul(t)
	name := testenv.Name(t)
	testenv.CleanupConsulKV(t, cc, name+"/")
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = taken.Close() })

	for _, tc := range []struct {
		name     string
		listen   string
		canceled bool
		want     string // in the error; empty: nil error
	}{
		{name: "port in use", listen: taken.Addr().String(), want: "address already in use"},
		{name: "context ended", listen: "127.0.0.1:0", canceled: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := baseEnv(t, name)
			env["ACTIVEKIT_LISTEN"] = tc.listen
			env["ACTIVEKIT_CONSUL_ADDR"] = testenv.ConsulAddr(t)
			env["ACTIVEKIT_CONSUL_PREFIX"] = name + "/config"
			before := goleak.IgnoreCurrent()
			svc, err := newService(t.Context(), nil, func(k string) string { return env[k] }, io.Discard, redisSessions)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			if tc.canceled {
				cancel()
			}
			err = svc.serve(ctx)
			cancel()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("serve: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("serve: %v; want it to mention %q", err, tc.want)
			}
			// serve runs once: a second one refuses (its context ended,
			// so that one that ran would return at once).
			if err := svc.serve(ctx); !errors.Is(err, errDone) {
				t.Errorf("second serve: %v, want %v", err, errDone)
			}
			if err := svc.Close(); err != nil {
				t.Errorf("Close after serve: %v", err)
			}
			goleak.VerifyNone(t, before)
		})
	}
}

// Close closes once: a second Close is no error and closes nothing again,
// and a closed instance refuses to serve instead of serving on closed
// clients.
func TestCloseTwiceThenServe(t *testing.T) {
	env := baseEnv(t, "svc-closed")
	svc, err := newService(t.Context(), nil, func(k string) string { return env[k] }, io.Discard, redisSessions)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := svc.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := svc.serve(ctx); !errors.Is(err, errDone) {
		t.Errorf("serve after Close: %v, want %v", err, errDone)
	}
}

// blockingStore holds the first Apply until release is closed, so a test
// can keep a request in flight through the shutdown.
type blockingStore struct {
	session.Store
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func (s *blockingStore) Apply(ctx context.Context, id string, d session.Delta) (uint64, error) {
	first := false
	s.once.Do(func() { first = true })
	if first {
		close(s.entered)
		<-s.release
	}
	return s.Store.Apply(ctx, id, d)
}

// A request in flight when the instance is told to stop still reaches
// Redis and is answered: the server shuts down (after the drain delay)
// waiting for it, and the clients close only after it finished.
func TestShutdownFinishesInFlight(t *testing.T) {
	env := baseEnv(t, "svc-inflight")
	sessionPrefix(t, env)
	env["ACTIVEKIT_DRAIN_DELAY"] = "100ms"
	bs := &blockingStore{entered: make(chan struct{}), release: make(chan struct{})}
	sessions := func(rdb redis.UniversalClient, cfg Config) (session.Store, error) {
		st, err := redisSessions(rdb, cfg)
		bs.Store = st
		return bs, err
	}
	sink := &logSink{addr: make(chan string, 1)}
	svc, err := newService(t.Context(), nil, func(k string) string { return env[k] }, sink, sessions)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	served := make(chan error, 1)
	go func() { served <- svc.serve(ctx) }()
	var base string
	select {
	case addr := <-sink.addr:
		base = "http://" + addr
	case err := <-served:
		t.Fatalf("serve returned before listening: %v", err)
	}
	c := newClient(t)
	waitReady(t, c, base)

	type answer struct {
		code int
		body []byte
		err  error
	}
	answered := make(chan answer, 1)
	go func() {
		resp, err := c.Get(base + "/visits")
		if err != nil {
			answered <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		answered <- answer{resp.StatusCode, body, err}
	}()
	<-bs.entered
	stop() // SIGTERM
	eventually(t, 5*time.Second, "server shutting down", func() bool { return sink.has("health: shutting down servers", nil) })
	if sink.has("health: stopped", nil) {
		t.Fatal("stopped with a request in flight")
	}
	close(bs.release)
	a := <-answered
	if a.err != nil || a.code != http.StatusOK || !strings.Contains(string(a.body), `"visits":1`) {
		t.Errorf("request in flight through the shutdown: %d %s %v", a.code, a.body, a.err)
	}
	if err := <-served; err != nil {
		t.Errorf("serve: %v", err)
	}
}
