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
	release chan struct{}
	once    sync.Once
}

func (p *hangingProxy) hangs(r *http.Request) bool {
	return p.hang.Load() && (p.all.Load() || strings.HasPrefix(r.URL.Path, "/v1/session/renew/") ||
		strings.HasPrefix(r.URL.Path, "/v1/kv/") && r.URL.Query().Has("index"))
}

func (p *hangingProxy) hold(r *http.Request) {
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
	p := &hangingProxy{release: make(chan struct{})}
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
