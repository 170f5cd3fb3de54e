package main

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session"
)

// deadAddr returns a local address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

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
		{name: "consul down", env: map[string]string{"ACTIVEKIT_CONSUL_ADDR": deadAddr(t), "ACTIVEKIT_CONSUL_PREFIX": prefix}, want: []string{"configuration", "connection refused"}},
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
// configuration watch and the Consul client included, and Close after it
// closes nothing twice.
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
