package dedupe_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// TestBatchDuplicateIDs: one batch holds the same event twice, as a
// publisher's republication after ErrUncertain puts the copy right after the
// original on the partition. The effect runs once, on every store, the
// batch path's and the per-event one alike.
func TestBatchDuplicateIDs(t *testing.T) {
	for name, f := range stores {
		t.Run(name, func(t *testing.T) {
			s, _ := f(t)
			ctx := context.Background()
			d, err := dedupe.New(s, dedupe.Config{Group: "g", Lease: 10 * time.Second, MaxWait: 20 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			a, b := events.New("/t", "t", nil), events.New("/t", "t", nil)
			es := []events.Event{a, b, a, a, b}
			runs := map[string]int{}
			h := func(_ context.Context, e events.Event) error { runs[e.ID]++; return nil }
			bt, err := d.Begin(ctx, es)
			if err != nil {
				t.Fatal(err)
			}
			for i := range es {
				if err := bt.Handle(ctx, i, h); err != nil {
					t.Fatalf("Handle(%d): %v", i, err)
				}
			}
			if err := bt.End(ctx); err != nil {
				t.Fatalf("End: %v", err)
			}
			if runs[a.ID] != 1 || runs[b.ID] != 1 {
				t.Fatalf("effects %v, want each event once", runs)
			}
		})
	}
}

// TestRedisClaimBatchDuplicateIDs: ClaimBatch answers each ID as Claim
// would, so a repeated ID is not claimed twice.
func TestRedisClaimBatchDuplicateIDs(t *testing.T) {
	for _, name := range []string{"redis", "rediscluster"} {
		t.Run(name, func(t *testing.T) {
			var c redis.UniversalClient
			if name == "redis" {
				c = testenv.Redis(t)
			} else {
				c = testenv.RedisCluster(t)
			}
			s, _ := redisStore(t, c)
			cs, err := s.ClaimBatch(context.Background(), "g", []string{"x", "y", "x"}, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if cs[0].Status != dedupe.Claimed || cs[1].Status != dedupe.Claimed || cs[2].Status != dedupe.Busy {
				t.Fatalf("statuses %v %v %v, want claimed claimed busy", cs[0].Status, cs[1].Status, cs[2].Status)
			}
		})
	}
}

// TestRedisRingBatch: a Ring spreads keys over shards by key, like a
// Cluster, so one script over many keys would write them all on the first
// key's shard, where Claim on the others never looks. The batch methods must
// put each key where the single-key methods find it.
func TestRedisRingBatch(t *testing.T) {
	addr := testenv.RedisAddr(t)
	// Two shards on one server, told apart by database: two key spaces,
	// as two servers would be.
	var mu sync.Mutex
	n := 0
	ring := redis.NewRing(&redis.RingOptions{
		Addrs: map[string]string{"a": addr, "b": addr},
		NewClient: func(o *redis.Options) *redis.Client {
			mu.Lock()
			defer mu.Unlock()
			o.DB = n % 2
			n++
			return redis.NewClient(o)
		},
	})
	t.Cleanup(func() { _ = ring.Close() })
	prefix := testenv.Name(t) + ":"
	for db := range 2 {
		c := redis.NewClient(&redis.Options{Addr: addr, DB: db})
		t.Cleanup(func() { _ = c.Close() })
		testenv.CleanupRedisPrefix(t, c, prefix)
	}
	s, err := dedupe.NewRedisStore(ring, dedupe.RedisConfig{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ids := make([]string, 40)
	for i := range ids {
		ids[i] = events.NewID()
	}
	cs, err := s.ClaimBatch(ctx, "g", ids, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range cs {
		if c.Status != dedupe.Claimed {
			t.Fatalf("ClaimBatch %d: %v", i, c.Status)
		}
	}
	for _, id := range ids {
		if c, err := s.Claim(ctx, "g", id, time.Minute); err != nil || c.Status != dedupe.Busy {
			t.Fatalf("Claim %s after ClaimBatch: %v, %v; want busy (claimed by the batch)", id, c.Status, err)
		}
	}
	res, err := s.DoneBatch(ctx, cs)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range res {
		if e != nil {
			t.Fatalf("DoneBatch %d: %v", i, e)
		}
	}
	for _, id := range ids {
		if c, err := s.Claim(ctx, "g", id, time.Minute); err != nil || c.Status != dedupe.Done {
			t.Fatalf("Claim %s after DoneBatch: %v, %v; want done", id, c.Status, err)
		}
	}
}

// TestMiddlewareLeaseLostAfterEffect: the handler's effect is done but its
// claim ran out before Done, and nobody took the event over. The effect
// happened, so the per-event path records it as done (as the batch path
// does) instead of failing, which would make the subscriber run it again.
func TestMiddlewareLeaseLostAfterEffect(t *testing.T) {
	c := testenv.Redis(t)
	s, prefix := redisStore(t, c)
	mw, err := dedupe.Middleware(s, dedupe.Config{Group: "g", Lease: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	runs := 0
	h := mw(func(context.Context, events.Event) error {
		runs++
		expireRedis(t, c, prefix)() // the lease runs out after the effect
		return nil
	})
	e := events.New("/t", "t", nil)
	if err := h(context.Background(), e); err != nil {
		t.Fatalf("first delivery: %v, want nil (the effect happened)", err)
	}
	if err := h(context.Background(), e); err != nil {
		t.Fatalf("redelivery: %v", err)
	}
	if runs != 1 {
		t.Fatalf("the effect ran %d times, want 1", runs)
	}
}

// naiveStore is an in-memory BatchStore whose ClaimBatch, like RedisStore's
// did, claims a repeated ID again under the batch's token. The batch path
// must not rely on a store to catch repeats.
type naiveStore struct {
	mu   sync.Mutex
	held map[string]string // ID -> token, or "d" when done
}

func (s *naiveStore) Claim(_ context.Context, g, id string, _ time.Duration) (dedupe.Claim, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch v := s.held[id]; {
	case v == "d":
		return dedupe.Claim{Group: g, ID: id, Status: dedupe.Done}, nil
	case v != "":
		return dedupe.Claim{Group: g, ID: id, Status: dedupe.Busy}, nil
	}
	tok := dedupe.NewToken()
	s.held[id] = tok
	return dedupe.Claim{Group: g, ID: id, Status: dedupe.Claimed, Token: tok}, nil
}

func (s *naiveStore) Done(_ context.Context, c dedupe.Claim) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v := s.held[c.ID]; v != c.Token && v != "d" {
		return dedupe.ErrLeaseLost
	}
	s.held[c.ID] = "d"
	return nil
}

func (s *naiveStore) Release(_ context.Context, c dedupe.Claim) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held[c.ID] == c.Token {
		delete(s.held, c.ID)
	}
	return nil
}

func (s *naiveStore) ClaimBatch(_ context.Context, g string, ids []string, _ time.Duration) ([]dedupe.Claim, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tok := dedupe.NewToken()
	cs := make([]dedupe.Claim, len(ids))
	for i, id := range ids {
		switch v := s.held[id]; {
		case v == "d":
			cs[i] = dedupe.Claim{Group: g, ID: id, Status: dedupe.Done}
		case v == "" || v == tok:
			s.held[id] = tok
			cs[i] = dedupe.Claim{Group: g, ID: id, Status: dedupe.Claimed, Token: tok}
		default:
			cs[i] = dedupe.Claim{Group: g, ID: id, Status: dedupe.Busy}
		}
	}
	return cs, nil
}

func (s *naiveStore) DoneBatch(ctx context.Context, cs []dedupe.Claim) ([]error, error) {
	res := make([]error, len(cs))
	for i, c := range cs {
		res[i] = s.Done(ctx, c)
	}
	return res, nil
}

func (s *naiveStore) ReleaseBatch(ctx context.Context, cs []dedupe.Claim) error {
	for _, c := range cs {
		_ = s.Release(ctx, c)
	}
	return nil
}

// TestBatchDuplicateIDsNaiveStore: the batch path runs a repeated event once
// even on a store that would claim the repeat again.
func TestBatchDuplicateIDsNaiveStore(t *testing.T) {
	d, err := dedupe.New(&naiveStore{held: map[string]string{}}, dedupe.Config{Group: "g", MaxWait: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a := events.New("/t", "t", nil)
	es := []events.Event{a, a}
	b, err := d.Begin(ctx, es)
	if err != nil {
		t.Fatal(err)
	}
	runs := 0
	for i := range es {
		if err := b.Handle(ctx, i, func(context.Context, events.Event) error { runs++; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.End(ctx); err != nil {
		t.Fatal(err)
	}
	if runs != 1 {
		t.Fatalf("the effect ran %d times, want 1", runs)
	}
}
