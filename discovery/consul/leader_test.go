package consul_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/consul"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/hashicorp/consul/api"
)

// hangingProxy forwards to the real agent and, once hang is set, holds
// session renewals and blocking KV queries (requests and answers) until
// release is closed or their client gives up: an agent that accepts
// connections and stops answering them, as a wedged or partitioned one does.
type hangingProxy struct {
	hang    atomic.Bool
	all     atomic.Bool // with hang, hold every request: a partition
	holding chan string // the path of each request held, when there is room
	release chan struct{}
	once    sync.Once
}

func (p *hangingProxy) hangs(r *http.Request) bool {
	return p.hang.Load() && (p.all.Load() || strings.HasPrefix(r.URL.Path, "/v1/session/renew/") ||
		strings.HasPrefix(r.URL.Path, "/v1/kv/") && r.URL.Query().Has("index"))
}

func (p *hangingProxy) hold(r *http.Request) {
	select {
	case p.holding <- r.URL.Path:
	default:
	}
	select {
	case <-p.release:
	case <-r.Context().Done():
	}
}

func newHangingProxy(t *testing.T) (*hangingProxy, *api.Client) {
	t.Helper()
	target, err := url.Parse("http://" + testenv.ConsulAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	p := &hangingProxy{release: make(chan struct{}), holding: make(chan string, 16)}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(resp *http.Response) error {
		if p.hangs(resp.Request) {
			p.hold(resp.Request)
		}
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.hangs(r) {
			p.hold(r)
			if r.Context().Err() != nil {
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { p.once.Do(func() { close(p.release) }) })
	cfg := api.DefaultConfig()
	cfg.Address = strings.TrimPrefix(srv.URL, "http://")
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cfg.Transport.CloseIdleConnections)
	return p, c
}

// TestLeaderHungAgent: when the agent stops answering (renewals and the
// lock monitor's query hang), the leader cannot know that it still leads:
// its context must be cancelled with ErrLeadershipLost within one session
// TTL of its last renewal (Consul invalidates the session between one and
// two TTLs), and Lead must return.
func TestLeaderHungAgent(t *testing.T) {
	proxy, c := newHangingProxy(t)
	key := testenv.Name(t) + "/leader"
	testenv.CleanupConsulKV(t, testenv.Consul(t), key)
	const ttl = 10 * time.Second
	l, err := consul.NewLeader(c, key, consul.LeaderConfig{SessionTTL: ttl, LockDelay: time.Millisecond, LockWaitTime: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	leading := make(chan struct{})
	cause := make(chan error, 1)
	done := make(chan error, 1)
	go func() {
		done <- l.Lead(ctx, func(lctx context.Context, _ uint64) error {
			close(leading)
			<-lctx.Done()
			cause <- context.Cause(lctx)
			return nil
		})
	}()
	select {
	case <-leading:
	case <-time.After(10 * time.Second):
		t.Fatal("not leading within 10s")
	}
	proxy.hang.Store(true)
	hungAt := time.Now()
	select {
	case err := <-cause:
		if !errors.Is(err, discovery.ErrLeadershipLost) {
			t.Fatalf("leader's cause %v, want ErrLeadershipLost", err)
		}
		t.Logf("leadership given up %v after the agent hung (session TTL %v)", time.Since(hungAt).Round(time.Millisecond), ttl)
	case <-time.After(ttl + 3*time.Second):
		cancel()
		<-done
		t.Fatalf("still leading %v after the agent hung (session TTL %v)", ttl+3*time.Second, ttl)
	}
	select {
	case err := <-done:
		if !errors.Is(err, discovery.ErrLeadershipLost) {
			t.Fatalf("Lead returned %v, want ErrLeadershipLost", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Lead did not return within 15s of losing leadership")
	}
}

// TestLeaderWaitingHungAgentHonoursContext: a candidate waits for the lock
// held by another when its agent stops answering (the blocking query on the
// lock key hangs). Ending its ctx must end Lead within LockWaitTime, as
// LockWaitTime's doc promises, not when the agent answers again: a process
// shutting down waits for its campaign.
func TestLeaderWaitingHungAgentHonoursContext(t *testing.T) {
	proxy, pc := newHangingProxy(t)
	c := testenv.Consul(t)
	key := testenv.Name(t) + "/leader"
	testenv.CleanupConsulKV(t, c, key)
	cfg := consul.LeaderConfig{SessionTTL: 10 * time.Second, LockDelay: time.Millisecond, LockWaitTime: time.Second}
	holder, err := consul.NewLeader(c, key, cfg)
	if err != nil {
		t.Fatal(err)
	}
	hctx, hcancel := context.WithCancel(context.Background())
	leading := make(chan struct{})
	held := make(chan error, 1)
	go func() {
		held <- holder.Lead(hctx, func(lctx context.Context, _ uint64) error {
			close(leading)
			<-lctx.Done()
			return nil
		})
	}()
	defer func() { hcancel(); <-held }()
	<-leading

	waiter, err := consul.NewLeader(pc, key, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- waiter.Lead(ctx, func(context.Context, uint64) error {
			t.Error("the waiting candidate was elected while the lock was held")
			return nil
		})
	}()
	// Wedge the agent, and wait until the candidate's blocking query on
	// the lock key is held by it.
	proxy.hang.Store(true)
	waitHeld(t, proxy, "/v1/kv/"+key)
	cancel()
	cancelled := time.Now()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Lead returned %v, want context.Canceled", err)
		}
		t.Logf("Lead returned %v after ctx ended", time.Since(cancelled).Round(time.Millisecond))
	case <-time.After(cfg.LockWaitTime + 5*time.Second):
		t.Fatalf("Lead still waiting %v after its ctx ended, the agent hung", cfg.LockWaitTime+5*time.Second)
	}
}

// waitHeld waits until p holds a request for path.
func waitHeld(t *testing.T, p *hangingProxy, path string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case got := <-p.holding:
			if got == path {
				return
			}
		case <-timeout:
			t.Fatalf("no request for %s held within 10s", path)
		}
	}
}
