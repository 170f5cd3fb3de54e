package dedupe_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/retry"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// storeFactory returns a fresh store; expire makes every live lease of the
// store end (server-side time for Redis, an injected clock for MongoDB).
type storeFactory func(t *testing.T) (s dedupe.Store, expire func())

func redisStore(t testing.TB, c redis.UniversalClient) (*dedupe.RedisStore, string) {
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, c, prefix)
	s, err := dedupe.NewRedisStore(c, dedupe.RedisConfig{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	return s, prefix
}

// expireRedis ends every lease under prefix, as time passing would: every
// claim's deadline is set to the epoch.
func expireRedis(t *testing.T, c redis.UniversalClient, prefix string) func() {
	return func() {
		ctx := context.Background()
		var keys []string
		scan := func(ctx context.Context, n redis.UniversalClient) error {
			iter := n.Scan(ctx, 0, prefix+"*", 100).Iterator()
			for iter.Next(ctx) {
				keys = append(keys, iter.Val())
			}
			return iter.Err()
		}
		var err error
		if cc, ok := c.(*redis.ClusterClient); ok {
			var mu sync.Mutex
			err = cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
				mu.Lock()
				defer mu.Unlock()
				return scan(ctx, n)
			})
		} else {
			err = scan(ctx, c)
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if c.Type(ctx, k).Val() != "hash" {
				continue
			}
			for f, v := range c.HGetAll(ctx, k).Val() {
				if strings.HasPrefix(v, "c:") {
					if err := c.HSet(ctx, k, f, v[:strings.LastIndexByte(v, ':')+1]+"0").Err(); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
	}
}

var stores = map[string]storeFactory{
	"redis": func(t *testing.T) (dedupe.Store, func()) {
		c := testenv.Redis(t)
		s, prefix := redisStore(t, c)
		return s, expireRedis(t, c, prefix)
	},
	"rediscluster": func(t *testing.T) (dedupe.Store, func()) {
		c := testenv.RedisCluster(t)
		s, prefix := redisStore(t, c)
		return s, expireRedis(t, c, prefix)
	},
	"mongo": mongoStore,
}

func TestStore(t *testing.T) {
	for name, f := range stores {
		t.Run(name, func(t *testing.T) {
			t.Run("ClaimDoneRelease", func(t *testing.T) { testClaimDoneRelease(t, f) })
			t.Run("LeaseExpiry", func(t *testing.T) { testLeaseExpiry(t, f) })
			t.Run("Middleware", func(t *testing.T) { testMiddleware(t, f) })
		})
	}
}

func testClaimDoneRelease(t *testing.T, f storeFactory) {
	s, _ := f(t)
	ctx := context.Background()
	c, err := s.Claim(ctx, "g", "e1", time.Minute)
	if err != nil || c.Status != dedupe.Claimed || c.Token == "" {
		t.Fatalf("first Claim: %+v, %v", c, err)
	}
	b, err := s.Claim(ctx, "g", "e1", time.Minute)
	if err != nil || b.Status != dedupe.Busy || b.Remaining <= 0 || b.Remaining > time.Minute {
		t.Fatalf("second Claim: %+v, %v; want busy with the lease remaining", b, err)
	}
	// Another group is independent.
	if o, err := s.Claim(ctx, "other", "e1", time.Minute); err != nil || o.Status != dedupe.Claimed {
		t.Fatalf("Claim in another group: %+v, %v", o, err)
	}
	if err := s.Done(ctx, c); err != nil {
		t.Fatalf("Done: %v", err)
	}
	if d, err := s.Claim(ctx, "g", "e1", time.Minute); err != nil || d.Status != dedupe.Done {
		t.Fatalf("Claim after Done: %+v, %v", d, err)
	}
	// Release lets the next claim run at once.
	c2, _ := s.Claim(ctx, "g", "e2", time.Minute)
	if err := s.Release(ctx, c2); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := s.Release(ctx, c2); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if c3, err := s.Claim(ctx, "g", "e2", time.Minute); err != nil || c3.Status != dedupe.Claimed {
		t.Fatalf("Claim after Release: %+v, %v", c3, err)
	}
}

func testLeaseExpiry(t *testing.T, f storeFactory) {
	s, expire := f(t)
	ctx := context.Background()
	old, _ := s.Claim(ctx, "g", "e", time.Minute)
	expire() // the claimer died; its lease ends
	next, err := s.Claim(ctx, "g", "e", time.Minute)
	if err != nil || next.Status != dedupe.Claimed {
		t.Fatalf("Claim after the lease ended: %+v, %v", next, err)
	}
	// The dead claimer cannot finish or drop its successor's claim.
	if err := s.Done(ctx, old); !errors.Is(err, dedupe.ErrLeaseLost) {
		t.Fatalf("Done with a lost lease: %v, want ErrLeaseLost", err)
	}
	if err := s.Release(ctx, old); err != nil {
		t.Fatal(err)
	}
	if b, _ := s.Claim(ctx, "g", "e", time.Minute); b.Status != dedupe.Busy {
		t.Fatalf("a stale Release dropped the live claim: %+v", b)
	}
	if err := s.Done(ctx, next); err != nil {
		t.Fatalf("Done by the successor: %v", err)
	}
}

func testMiddleware(t *testing.T, f storeFactory) {
	s, _ := f(t)
	mw, err := dedupe.Middleware(s, dedupe.Config{Group: "g", Lease: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	fail := atomic.Bool{}
	h := mw(func(ctx context.Context, e events.Event) error {
		if _, ok := dedupe.FromContext(ctx); !ok {
			t.Error("handler ctx carries no claim")
		}
		runs.Add(1)
		if fail.Load() {
			return errors.New("effect failed")
		}
		return nil
	})
	e := events.New("/test", "t", nil)
	ctx := context.Background()
	fail.Store(true)
	if err := h(ctx, e); err == nil {
		t.Fatal("failing handler returned nil")
	}
	fail.Store(false)
	for range 3 { // the failure released the claim; then redeliveries are absorbed
		if err := h(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("handler ran %d times, want 2 (one failure, one success)", n)
	}
}

// TestMiddlewareConcurrentDeliveries delivers the same events to many
// goroutines at once, as a rebalance can, and checks that each effect ran
// once. Redis only: FerretDB cannot back a concurrency claim.
func TestMiddlewareConcurrentDeliveries(t *testing.T) {
	c := testenv.Redis(t)
	s, _ := redisStore(t, c)
	mw, err := dedupe.Middleware(s, dedupe.Config{Group: "g", Lease: 5 * time.Second, MaxWait: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	effects := map[string]int{}
	h := mw(func(ctx context.Context, e events.Event) error {
		mu.Lock()
		effects[e.ID]++
		mu.Unlock()
		return nil
	})
	evs := make([]events.Event, 50)
	for i := range evs {
		evs[i] = events.New("/test", "t", nil)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for _, e := range evs {
				if err := h(context.Background(), e); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	for _, e := range evs {
		if effects[e.ID] != 1 {
			t.Fatalf("event %s: effect ran %d times", e.ID, effects[e.ID])
		}
	}
}

func TestRedisClaimBatchAndDoneWith(t *testing.T) {
	c := testenv.Redis(t)
	s, prefix := redisStore(t, c)
	ctx := context.Background()
	// The script cache may be empty (NOSCRIPT path).
	if err := c.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	pre, _ := s.Claim(ctx, "g", "id-1", time.Minute)
	_ = s.Done(ctx, pre)
	busy, _ := s.Claim(ctx, "g", "id-2", time.Minute)
	if err := c.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	ids := make([]string, 100)
	for i := range ids {
		ids[i] = "id-" + strconv.Itoa(i)
	}
	claims, err := s.ClaimBatch(ctx, "g", ids, time.Minute)
	if err != nil {
		t.Fatalf("ClaimBatch: %v", err)
	}
	for i, cl := range claims {
		want := dedupe.Claimed
		switch i {
		case 1:
			want = dedupe.Done
		case 2:
			want = dedupe.Busy
		}
		if cl.ID != ids[i] || cl.Status != want {
			t.Fatalf("claim %d: %+v, want %v", i, cl, want)
		}
	}
	_ = busy

	// DoneWith runs the effect and the mark together.
	counter := s.Key("g", "id-5") + ":count"
	err = s.DoneWith(ctx, claims[5], func(ctx context.Context, p redis.Pipeliner) error {
		p.Incr(ctx, counter)
		return nil
	})
	if err != nil {
		t.Fatalf("DoneWith: %v", err)
	}
	if n, _ := c.Get(ctx, counter).Int(); n != 1 {
		t.Fatalf("counter %d, want 1", n)
	}
	if d, _ := s.Claim(ctx, "g", "id-5", time.Minute); d.Status != dedupe.Done {
		t.Fatalf("after DoneWith: %+v", d)
	}
	// With the lease lost, the effect does not run.
	expireRedis(t, c, prefix)()
	err = s.DoneWith(ctx, claims[6], func(ctx context.Context, p redis.Pipeliner) error {
		p.Incr(ctx, counter)
		return nil
	})
	if !errors.Is(err, dedupe.ErrLeaseLost) {
		t.Fatalf("DoneWith after the lease ended: %v", err)
	}
	if n, _ := c.Get(ctx, counter).Int(); n != 1 {
		t.Fatalf("counter %d after a lost lease, want 1", n)
	}
}

func TestConfigErrors(t *testing.T) {
	if _, err := dedupe.Middleware(nil, dedupe.Config{Group: "g"}); !errors.Is(err, dedupe.ErrConfig) {
		t.Errorf("nil store: %v", err)
	}
	rc := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rc.Close()
	s, _ := dedupe.NewRedisStore(rc, dedupe.RedisConfig{})
	if _, err := dedupe.Middleware(s, dedupe.Config{}); !errors.Is(err, dedupe.ErrConfig) {
		t.Errorf("no group: %v", err)
	}
	if _, err := dedupe.Middleware(s, dedupe.Config{Group: "g", Lease: -1}); !errors.Is(err, dedupe.ErrConfig) || events.IsUnavailable(err) {
		t.Errorf("negative lease: %v, want ErrConfig and not Unavailable", err)
	}
	if _, err := dedupe.NewRedisStore(nil, dedupe.RedisConfig{}); !errors.Is(err, dedupe.ErrConfig) {
		t.Errorf("nil client: %v", err)
	}
	if _, err := dedupe.NewMongoStore(nil, dedupe.MongoConfig{}); !errors.Is(err, dedupe.ErrConfig) {
		t.Errorf("nil collection: %v", err)
	}
}

var errDown = errors.New("store down")

// downStore is a BatchStore whose every call fails with errDown while down
// is set, as when the store's server is unreachable. When downAfter is n >
// 0, the next n calls succeed, and then down is set.
type downStore struct {
	s         dedupe.BatchStore
	down      atomic.Bool
	downAfter atomic.Int32
}

func (d *downStore) err() error {
	if d.down.Load() {
		return errDown
	}
	if d.downAfter.Load() > 0 && d.downAfter.Add(-1) == 0 {
		d.down.Store(true)
	}
	return nil
}

func (d *downStore) Claim(ctx context.Context, g, id string, l time.Duration) (dedupe.Claim, error) {
	if err := d.err(); err != nil {
		return dedupe.Claim{}, err
	}
	return d.s.Claim(ctx, g, id, l)
}

func (d *downStore) Done(ctx context.Context, c dedupe.Claim) error {
	if err := d.err(); err != nil {
		return err
	}
	return d.s.Done(ctx, c)
}

func (d *downStore) Release(ctx context.Context, c dedupe.Claim) error {
	if err := d.err(); err != nil {
		return err
	}
	return d.s.Release(ctx, c)
}

func (d *downStore) ClaimBatch(ctx context.Context, g string, ids []string, l time.Duration) ([]dedupe.Claim, error) {
	if err := d.err(); err != nil {
		return nil, err
	}
	return d.s.ClaimBatch(ctx, g, ids, l)
}

func (d *downStore) DoneBatch(ctx context.Context, cs []dedupe.Claim) ([]error, error) {
	if err := d.err(); err != nil {
		return nil, err
	}
	return d.s.DoneBatch(ctx, cs)
}

func (d *downStore) ReleaseBatch(ctx context.Context, cs []dedupe.Claim) error {
	if err := d.err(); err != nil {
		return err
	}
	return d.s.ReleaseBatch(ctx, cs)
}

// plainStore hides a store's batch methods, so the batch path calls it once
// per event.
type plainStore struct{ dedupe.Store }

// TestMiddlewareStoreErrorsAreUnavailable: every store error the Middleware
// returns, from Claim, Done or Release, is events.Unavailable and keeps its
// chain; a handler's own error with the store up is not.
func TestMiddlewareStoreErrorsAreUnavailable(t *testing.T) {
	c := testenv.Redis(t)
	rs, prefix := redisStore(t, c)
	s := &downStore{s: rs}
	mw, err := dedupe.Middleware(s, dedupe.Config{Group: "g", Retry: retry.Policy{MaxAttempts: 2, InitialInterval: time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	handlerErr := errors.New("effect failed")
	for _, tc := range []struct {
		name        string
		downBefore  bool  // the store is down before the claim
		downInside  bool  // the store goes down while the handler runs
		expire      bool  // the claim runs out while the handler runs
		downAfter   int32 // the store goes down after that many more calls
		herr        error // the handler's result
		ran         bool
		unavailable bool
	}{
		{name: "claim", downBefore: true, unavailable: true},
		{name: "done", downInside: true, ran: true, unavailable: true},
		{name: "release", downInside: true, herr: handlerErr, ran: true, unavailable: true},
		// The claim ran out before Done (ErrLeaseLost), and the store goes
		// down as the event is claimed again, or marked done, to record it.
		{name: "claim after the lease ran out", expire: true, downAfter: 1, ran: true, unavailable: true},
		{name: "done after the lease ran out", expire: true, downAfter: 2, ran: true, unavailable: true},
		{name: "lease ran out, store up", expire: true, ran: true},
		{name: "handler error, store up", herr: handlerErr, ran: true},
		{name: "permanent handler error, store up", herr: events.Permanent(handlerErr), ran: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.down.Store(tc.downBefore)
			defer s.down.Store(false)
			defer s.downAfter.Store(0)
			ran := false
			h := mw(func(context.Context, events.Event) error {
				ran = true
				if tc.downInside {
					s.down.Store(true)
				}
				if tc.expire {
					expireRedis(t, c, prefix)()
				}
				s.downAfter.Store(tc.downAfter)
				return tc.herr
			})
			err := h(context.Background(), events.New("/t", "t", nil))
			if ran != tc.ran {
				t.Fatalf("handler ran: %v, want %v", ran, tc.ran)
			}
			if events.IsUnavailable(err) != tc.unavailable {
				t.Fatalf("err %v: IsUnavailable %v, want %v", err, events.IsUnavailable(err), tc.unavailable)
			}
			if tc.unavailable && !errors.Is(err, errDown) {
				t.Errorf("err %v does not wrap the store's error", err)
			}
			if tc.herr != nil && !errors.Is(err, handlerErr) {
				t.Errorf("err %v does not wrap the handler's error", err)
			}
		})
	}
}
