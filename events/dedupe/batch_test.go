package dedupe_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/retry"
	"github.com/redis/go-redis/v9"
)

func TestBatch(t *testing.T) {
	for name, f := range stores {
		t.Run(name, func(t *testing.T) { testBatch(t, f) })
	}
}

// testBatch walks one batch through every state: run under the batch's
// claim, already done, busy at Begin, failed then retried, and never handled
// (the subscriber stopped).
func testBatch(t *testing.T, f storeFactory) {
	s, _ := f(t)
	ctx := context.Background()
	d, err := dedupe.New(s, dedupe.Config{Group: "g", Lease: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	es := make([]events.Event, 6)
	for i := range es {
		es[i] = events.New("/test", "t", nil)
	}
	pre, _ := s.Claim(ctx, "g", dedupe.Key(es[1]), time.Minute)
	if err := s.Done(ctx, pre); err != nil {
		t.Fatal(err)
	}
	other, _ := s.Claim(ctx, "g", dedupe.Key(es[2]), time.Minute) // another instance holds es[2]

	b, err := d.Begin(ctx, es)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	if err := s.Release(ctx, other); err != nil { // it gives es[2] up
		t.Fatal(err)
	}
	runs := make([]int, len(es))
	var claims []dedupe.Claim
	fail := true
	h := func(ctx context.Context, e events.Event) error {
		c, ok := dedupe.FromContext(ctx)
		if !ok || c.ID != dedupe.Key(e) || c.Status != dedupe.Claimed {
			t.Errorf("event %s: claim in ctx %+v, %v", e.ID, c, ok)
		}
		claims = append(claims, c)
		for i := range es {
			if es[i].ID == e.ID {
				runs[i]++
				if i == 3 && fail {
					fail = false
					return errors.New("effect failed")
				}
			}
		}
		return nil
	}
	for i := range 5 { // the subscriber stops before es[5]
		if err := b.Handle(ctx, i, h); err != nil {
			if i != 3 {
				t.Fatalf("Handle(%d): %v", i, err)
			}
			if err := b.Handle(ctx, i, h); err != nil { // the subscriber's retry
				t.Fatalf("Handle(%d) again: %v", i, err)
			}
		}
	}
	// What the batch ran is recorded as done at End, in one round trip,
	// or before the per-event path takes an event (es[0], before es[2]).
	if c, _ := s.Claim(ctx, "g", dedupe.Key(es[0]), time.Minute); c.Status != dedupe.Done {
		t.Fatalf("es[0] before End: %v, want done (recorded before es[2] went per event)", c.Status)
	}
	if c, _ := s.Claim(ctx, "g", dedupe.Key(es[4]), time.Minute); c.Status != dedupe.Busy {
		t.Fatalf("es[4] before End: %v, want busy (claimed by the batch)", c.Status)
	}
	if err := b.End(ctx); err != nil {
		t.Fatalf("End: %v", err)
	}
	if err := b.End(ctx); err != nil {
		t.Fatalf("End again: %v", err)
	}
	if want := []int{1, 0, 1, 2, 1, 0}; !equal(runs, want) {
		t.Fatalf("handler runs %v, want %v", runs, want)
	}
	// Runs: es[0], es[2] (per event), es[3] (batch claim, fails), es[3]
	// (per event), es[4].
	if _, ok := s.(dedupe.BatchStore); ok && (claims[0].Token != claims[2].Token || claims[0].Token != claims[4].Token) {
		t.Errorf("es[0], es[3]'s first run and es[4] should share the batch's claim token: %v", claims)
	}
	if claims[1].Token == claims[0].Token || claims[3].Token == claims[2].Token {
		t.Errorf("the per-event runs should have claims of their own: %v", claims)
	}
	for i, want := range []dedupe.Status{dedupe.Done, dedupe.Done, dedupe.Done, dedupe.Done, dedupe.Done, dedupe.Claimed} {
		if c, err := s.Claim(ctx, "g", dedupe.Key(es[i]), time.Minute); err != nil || c.Status != want {
			t.Errorf("es[%d] after End: %v, %v; want %v", i, c.Status, err, want)
		}
	}
	// A redelivery of the whole batch runs only what was never done.
	b2, err := d.Begin(ctx, es)
	if err != nil {
		t.Fatal(err)
	}
	for i := range es {
		if i == 5 {
			break // still held by the check above: busy; not waited for here
		}
		if err := b2.Handle(ctx, i, h); err != nil {
			t.Fatal(err)
		}
	}
	if err := b2.End(ctx); err != nil {
		t.Fatal(err)
	}
	if want := []int{1, 0, 1, 2, 1, 0}; !equal(runs, want) {
		t.Fatalf("handler runs after a redelivery %v, want %v", runs, want)
	}
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestBatchRenew: once half the lease has passed, the next Handle records
// what succeeded as done and claims the rest again, so the claims of a long
// batch never run out.
func TestBatchRenew(t *testing.T) {
	c := testenv.Redis(t)
	s, _ := redisStore(t, c)
	ctx := context.Background()
	clk := &clock{now: time.Now()}
	d, err := dedupe.New(s, dedupe.Config{Group: "g", Lease: 10 * time.Second, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	es := []events.Event{events.New("/t", "t", nil), events.New("/t", "t", nil), events.New("/t", "t", nil)}
	b, err := d.Begin(ctx, es)
	if err != nil {
		t.Fatal(err)
	}
	var tokens []string
	h := func(ctx context.Context, e events.Event) error {
		cl, _ := dedupe.FromContext(ctx)
		tokens = append(tokens, cl.Token)
		if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > 9*time.Second {
			t.Errorf("handler deadline %v, %v; want at most 9s (0.9 of the lease) from the claim", dl, ok)
		}
		return nil
	}
	if err := b.Handle(ctx, 0, h); err != nil {
		t.Fatal(err)
	}
	clk.Add(6 * time.Second)
	if err := b.Handle(ctx, 1, h); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.Claim(ctx, "g", dedupe.Key(es[0]), time.Minute); st.Status != dedupe.Done {
		t.Fatalf("es[0] after the renewal: %v, want done", st.Status)
	}
	if tokens[0] == tokens[1] {
		t.Fatal("es[1] ran under the batch's first claim, not a renewed one")
	}
	if err := b.Handle(ctx, 2, h); err != nil {
		t.Fatal(err)
	}
	if err := b.End(ctx); err != nil {
		t.Fatal(err)
	}
	for i, e := range es {
		if st, _ := s.Claim(ctx, "g", dedupe.Key(e), time.Minute); st.Status != dedupe.Done {
			t.Errorf("es[%d]: %v, want done", i, st.Status)
		}
	}
}

// TestBatchLeaseLostBeforeEnd: a handler's claim ran out before End. When
// nobody took the event over, End records it as done without running it
// again; when another claimer did, End still marks it done (its effect
// happened), so the other claimer's DoneWith records no second effect.
func TestBatchLeaseLostBeforeEnd(t *testing.T) {
	c := testenv.Redis(t)
	s, prefix := redisStore(t, c)
	ctx := context.Background()
	d, err := dedupe.New(s, dedupe.Config{Group: "g", Lease: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	es := []events.Event{events.New("/t", "t", nil), events.New("/t", "t", nil)}
	b, err := d.Begin(ctx, es)
	if err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	h := func(context.Context, events.Event) error { runs.Add(1); return nil }
	for i := range es {
		if err := b.Handle(ctx, i, h); err != nil {
			t.Fatal(err)
		}
	}
	expireRedis(t, c, prefix)()
	taker, err := s.Claim(ctx, "g", dedupe.Key(es[1]), time.Minute)
	if err != nil || taker.Status != dedupe.Claimed {
		t.Fatalf("taking es[1] over: %+v, %v", taker, err)
	}
	if err := b.End(ctx); err != nil {
		t.Fatalf("End: %v", err)
	}
	for i, e := range es {
		if st, _ := s.Claim(ctx, "g", dedupe.Key(e), time.Minute); st.Status != dedupe.Done {
			t.Errorf("es[%d] after End: %v, want done", i, st.Status)
		}
	}
	counter := s.Key("g", es[1].ID) + ":effect"
	err = s.DoneWith(ctx, taker, func(ctx context.Context, p redis.Pipeliner) error {
		p.Incr(ctx, counter)
		return nil
	})
	if !errors.Is(err, dedupe.ErrLeaseLost) {
		t.Fatalf("the taker's DoneWith: %v, want ErrLeaseLost", err)
	}
	if n, _ := c.Exists(ctx, counter).Result(); n != 0 {
		t.Fatal("the taker recorded a second effect")
	}
	if runs.Load() != 2 {
		t.Fatalf("%d runs, want 2", runs.Load())
	}
}

// TestBatchConcurrentDeliveries delivers the same events, as batches, to
// many goroutines at once, as a rebalance can; each effect runs once.
func TestBatchConcurrentDeliveries(t *testing.T) {
	for _, name := range []string{"redis", "rediscluster"} {
		t.Run(name, func(t *testing.T) {
			var c redis.UniversalClient
			if name == "redis" {
				c = testenv.Redis(t)
			} else {
				c = testenv.RedisCluster(t)
			}
			s, _ := redisStore(t, c)
			d, err := dedupe.New(s, dedupe.Config{Group: "g", Lease: 5 * time.Second, MaxWait: 20 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			effects := map[string]int{}
			h := func(ctx context.Context, e events.Event) error {
				mu.Lock()
				effects[e.ID]++
				mu.Unlock()
				return nil
			}
			evs := make([]events.Event, 50)
			for i := range evs {
				evs[i] = events.New("/test", "t", nil)
			}
			var wg sync.WaitGroup
			for range 8 {
				wg.Go(func() {
					ctx := context.Background()
					b, err := d.Begin(ctx, evs)
					if err != nil {
						t.Error(err)
						return
					}
					for i := range evs {
						if err := b.Handle(ctx, i, h); err != nil {
							t.Error(err)
						}
					}
					if err := b.End(ctx); err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			for _, e := range evs {
				if effects[e.ID] != 1 {
					t.Fatalf("event %s: effect ran %d times", e.ID, effects[e.ID])
				}
			}
		})
	}
}

// TestRedisBatchRoundTrips: a batch of 300 events costs two calls to
// Redis, whatever its size, on a standalone server.
func TestRedisBatchRoundTrips(t *testing.T) {
	c := testenv.Redis(t)
	s, _ := redisStore(t, c)
	var calls atomic.Int32
	c.AddHook(countHook{&calls})
	ctx := context.Background()
	d, err := dedupe.New(s, dedupe.Config{Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	run := func(n int) {
		es := make([]events.Event, n)
		for i := range es {
			es[i] = events.New("/t", "t", nil)
		}
		b, err := d.Begin(ctx, es)
		if err != nil {
			t.Fatal(err)
		}
		for i := range es {
			if err := b.Handle(ctx, i, func(context.Context, events.Event) error { return nil }); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.End(ctx); err != nil {
			t.Fatal(err)
		}
	}
	run(1) // loads the scripts into the server's cache
	calls.Store(0)
	run(300)
	if n := calls.Load(); n != 2 {
		t.Fatalf("%d calls to Redis for a batch of 300, want 2", n)
	}
}

// countHook counts commands and pipelines sent; a script call that falls
// back from EVALSHA to EVAL counts twice.
type countHook struct{ n *atomic.Int32 }

func (h countHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "evalsha" || cmd.Name() == "eval" {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (h countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}

// TestBatchStoreErrorsAreUnavailable: on the batch path, every store error
// (Begin's claims, a renewal's done marks, a failed attempt's release, the
// per-event path, End's done marks) is events.Unavailable, and a Begin,
// Handle or End repeated once the store is back picks up where the failed
// one stopped: every event's effect runs once (the failed one twice), and
// all are recorded as done. With a BatchStore and with a plain Store.
func TestBatchStoreErrorsAreUnavailable(t *testing.T) {
	for _, plain := range []bool{false, true} {
		name := "batchstore"
		if plain {
			name = "plainstore"
		}
		t.Run(name, func(t *testing.T) { testBatchStoreErrorsAreUnavailable(t, plain) })
	}
}

func testBatchStoreErrorsAreUnavailable(t *testing.T, plain bool) {
	c := testenv.Redis(t)
	rs, prefix := redisStore(t, c)
	ds := &downStore{s: rs}
	var s dedupe.Store = ds
	if plain {
		s = plainStore{ds}
	}
	clk := &clock{now: time.Now()}
	d, err := dedupe.New(s, dedupe.Config{Group: "g", Lease: 10 * time.Second, Now: clk.Now,
		Retry: retry.Policy{MaxAttempts: 2, InitialInterval: time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	unavailable := func(step string, err error) {
		t.Helper()
		if !events.IsUnavailable(err) || !errors.Is(err, errDown) {
			t.Fatalf("%s with the store down: %v, want an Unavailable error wrapping the store's", step, err)
		}
	}
	es := make([]events.Event, 4)
	for i := range es {
		es[i] = events.New("/t", "t", nil)
	}
	runs := make([]int, len(es))
	failNext := false
	h := func(_ context.Context, e events.Event) error {
		for i := range es {
			if es[i].ID == e.ID {
				runs[i]++
			}
		}
		if failNext {
			failNext = false
			ds.down.Store(true) // the store goes down while the handler fails
			return errors.New("effect failed")
		}
		return nil
	}

	ds.down.Store(true)
	_, err = d.Begin(ctx, es)
	unavailable("Begin", err)
	ds.down.Store(false)
	b, err := d.Begin(ctx, es)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Handle(ctx, 0, h); err != nil {
		t.Fatal(err)
	}

	// A renewal is due, and the store is down: es[1] is not run.
	clk.Add(6 * time.Second)
	ds.down.Store(true)
	unavailable("Handle renewing", b.Handle(ctx, 1, h))
	ds.down.Store(false)
	if err := b.Handle(ctx, 1, h); err != nil {
		t.Fatalf("Handle again once the store is back: %v", err)
	}

	// es[2] fails and its release cannot reach the store.
	failNext = true
	err = b.Handle(ctx, 2, h)
	unavailable("Handle releasing", err)
	// Still down: the per-event path fails too.
	unavailable("Handle per event", b.Handle(ctx, 2, h))
	ds.down.Store(false)
	expireRedis(t, c, prefix)() // the unreleased claim (and the batch's) run out
	if err := b.Handle(ctx, 2, h); err != nil {
		t.Fatalf("Handle again once the store is back: %v", err)
	}
	if err := b.Handle(ctx, 3, h); err != nil { // under a claim that ran out
		t.Fatal(err)
	}

	if plain {
		// es[3]'s claim ran out, and Done says so (RedisStore's DoneBatch
		// marks it done all the same): End claims it again and marks it
		// done, and the store goes down before the claim, then before the
		// done mark.
		ds.downAfter.Store(1)
		unavailable("End claiming again", b.End(ctx))
		ds.down.Store(false)
		ds.downAfter.Store(2)
		unavailable("End marking done", b.End(ctx))
		ds.down.Store(false)
	}
	ds.down.Store(true)
	unavailable("End", b.End(ctx))
	ds.down.Store(false)
	if err := b.End(ctx); err != nil {
		t.Fatalf("End again once the store is back: %v", err)
	}
	if want := []int{1, 1, 2, 1}; !equal(runs, want) {
		t.Fatalf("runs %v, want %v", runs, want)
	}
	for i, e := range es {
		if st, err := rs.Claim(ctx, "g", dedupe.Key(e), time.Minute); err != nil || st.Status != dedupe.Done {
			t.Errorf("es[%d]: %v, %v; want done", i, st.Status, err)
		}
	}
}
