package consul_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/consul"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/hashicorp/consul/api"
)

// handover records, in order, the moments that matter when leadership
// passes from one candidate to another: a term that starts, and one whose
// context is cancelled.
type handover struct {
	mu     sync.Mutex
	events []string
	lead   chan string // a term started (who)
	lost   chan error  // the first term's cause
}

func newHandover() *handover {
	return &handover{lead: make(chan string, 2), lost: make(chan error, 2)}
}

func (h *handover) record(e string) {
	h.mu.Lock()
	h.events = append(h.events, e)
	h.mu.Unlock()
}

// campaign runs l.Lead for who until ctx ends, recording its term.
func (h *handover) campaign(ctx context.Context, wg *sync.WaitGroup, l *consul.Leader, who string) {
	wg.Go(func() {
		_ = l.Lead(ctx, func(lctx context.Context, _ uint64) error {
			h.record(who + " leads")
			h.lead <- who
			<-lctx.Done()
			h.record(who + " stops")
			h.lost <- context.Cause(lctx)
			return nil
		})
	})
}

// check fails t unless the first leader's term was cancelled before the
// second one's started.
func (h *handover) check(t *testing.T, first, second string) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	want := []string{first + " leads", first + " stops", second + " leads"}
	if len(h.events) < 3 || h.events[0] != want[0] || h.events[1] != want[1] || h.events[2] != want[2] {
		t.Fatalf("events %q, want %q: two leaders at once", h.events, want)
	}
}

// TestLeaderStopsBeforeSuccessorSessionDestroyed: an operator (or a failed
// node check) invalidates the leader's session. Consul releases the lock
// and refuses it for LockDelay: the old leader's context must be cancelled
// within it, before the other candidate's term starts, as LockDelay's doc
// promises.
func TestLeaderStopsBeforeSuccessorSessionDestroyed(t *testing.T) {
	c := testenv.Consul(t)
	key := testenv.Name(t) + "/leader"
	testenv.CleanupConsulKV(t, c, key)
	cfg := consul.LeaderConfig{SessionTTL: 10 * time.Second, LockDelay: time.Second, LockWaitTime: time.Second}
	h := newHandover()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	a, err := consul.NewLeader(c, key, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.campaign(ctx, &wg, a, "a")
	<-h.lead
	b, err := consul.NewLeader(c, key, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.campaign(ctx, &wg, b, "b")
	pair, _, err := c.KV().Get(key, nil)
	if err != nil || pair == nil || pair.Session == "" {
		t.Fatalf("lock key %+v %v, want held", pair, err)
	}
	if _, err := c.Session().Destroy(pair.Session, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.lead:
	case <-time.After(api.DefaultLockRetryTime + 10*time.Second):
		t.Fatal("no new leader")
	}
	h.check(t, "a", "b")
	if cause := <-h.lost; !errors.Is(cause, discovery.ErrLeadershipLost) {
		t.Fatalf("old leader's cause %v, want ErrLeadershipLost", cause)
	}
}

// TestLeaderStopsBeforeSuccessorPartitioned: the leader's agent stops
// answering anything (renewals, the lock's monitor, the release): Consul
// invalidates its session once the TTL lapses, and another candidate, on a
// working agent, takes the lock after LockDelay. The old leader, which can
// no longer know whether it leads, must have stopped before: within a TTL
// of its last renewal, while Consul waits at least that long.
func TestLeaderStopsBeforeSuccessorPartitioned(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a session TTL to lapse")
	}
	proxy, pc := newHangingProxy(t)
	c := testenv.Consul(t)
	key := testenv.Name(t) + "/leader"
	testenv.CleanupConsulKV(t, c, key)
	const ttl = 10 * time.Second
	cfg := consul.LeaderConfig{SessionTTL: ttl, LockDelay: time.Millisecond, LockWaitTime: time.Second}
	h := newHandover()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	a, err := consul.NewLeader(pc, key, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.campaign(ctx, &wg, a, "a")
	<-h.lead
	b, err := consul.NewLeader(c, key, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.campaign(ctx, &wg, b, "b")
	proxy.all.Store(true)
	proxy.hang.Store(true)
	cutAt := time.Now()
	select {
	case who := <-h.lead:
		t.Logf("%s leads %v after the partition", who, time.Since(cutAt).Round(time.Millisecond))
	case <-time.After(3*ttl + api.DefaultLockRetryTime):
		t.Fatal("no new leader")
	}
	h.check(t, "a", "b")
	if cause := <-h.lost; !errors.Is(cause, discovery.ErrLeadershipLost) {
		t.Fatalf("old leader's cause %v, want ErrLeadershipLost", cause)
	}
}

// TestLeaderAgentRestart: the leader's agent restarts and comes back
// without the session (a dev agent keeps no state). The leader, even one
// told to ride out brief failures of the lock's monitor, must see that it
// no longer leads and Lead must return.
func TestLeaderAgentRestart(t *testing.T) {
	agent := startPrivateAgent(t)
	c := agent.client()
	key := testenv.Name(t) + "/leader"
	const ttl = 10 * time.Second
	l, err := consul.NewLeader(c, key, consul.LeaderConfig{
		SessionTTL: ttl, LockDelay: time.Millisecond, LockWaitTime: time.Second,
		MonitorRetries: 3, MonitorRetryTime: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	h := newHandover()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	h.campaign(ctx, &wg, l, "a")
	select {
	case <-h.lead:
	case <-time.After(10 * time.Second):
		t.Fatal("not leading within 10s")
	}
	agent.stop()
	agent.start()
	back := time.Now()
	select {
	case cause := <-h.lost:
		if !errors.Is(cause, discovery.ErrLeadershipLost) {
			t.Fatalf("cause %v, want ErrLeadershipLost", cause)
		}
		t.Logf("leadership given up %v after the agent came back", time.Since(back).Round(time.Millisecond))
	case <-time.After(ttl):
		t.Fatalf("still leading %v after the agent came back without the session", ttl)
	}
}

// TestLeaderKeyConflict: a key that holds something else than a lock (not
// written with api.LockFlagValue) is refused with api.ErrLockConflict, as
// api.Lock refuses it, rather than taken over.
func TestLeaderKeyConflict(t *testing.T) {
	c := testenv.Consul(t)
	key := testenv.Name(t) + "/leader"
	testenv.CleanupConsulKV(t, c, key)
	if _, err := c.KV().Put(&api.KVPair{Key: key, Value: []byte("config")}, nil); err != nil {
		t.Fatal(err)
	}
	l, err := consul.NewLeader(c, key, consul.LeaderConfig{LockWaitTime: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = l.Lead(context.Background(), func(context.Context, uint64) error {
		t.Error("elected over a key that is not a lock")
		return nil
	})
	if !errors.Is(err, api.ErrLockConflict) {
		t.Fatalf("Lead: %v, want api.ErrLockConflict", err)
	}
	pair, _, err := c.KV().Get(key, nil)
	if err != nil || pair == nil || string(pair.Value) != "config" || pair.Session != "" {
		t.Fatalf("key after Lead: %+v %v, want untouched", pair, err)
	}
}
