package activetest_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/activetest"
	"github.com/activekit/activekit/internal/testenv"
)

// redisBehind returns a go-redis client of the real Redis through p, with
// no retries (each failure is seen as it is), closed at the end of the
// test, and a key prefix of the test's own, removed at its end.
func redisBehind(t *testing.T, p *activetest.Proxy, o redis.Options) (*redis.Client, string) {
	t.Helper()
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, testenv.Redis(t), prefix)
	o.Addr = p.Addr()
	o.MaxRetries = -1
	c := redis.NewClient(&o)
	t.Cleanup(func() { _ = c.Close() })
	return c, prefix
}

// A cut makes the commands in flight and the new ones fail at once, with a
// connection error rather than a timeout, whatever the client's timeouts;
// Heal restores the service.
func TestProxyRedisCut(t *testing.T) {
	p := activetest.NewProxy(t, testenv.RedisAddr(t))
	// Timeouts far longer than the test waits: a command that hung on
	// the cut could not pass.
	const workers = 8
	c, prefix := redisBehind(t, p, redis.Options{PoolSize: workers + 1, ReadTimeout: time.Minute, WriteTimeout: time.Minute})
	ctx := t.Context()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}

	// One command surely in flight (a BLPOP that would wait 30s), and
	// workers sending commands as fast as they can.
	blpop := make(chan error, 1)
	sent := p.Stats().Up
	go func() { blpop <- c.BLPop(ctx, 30*time.Second, prefix+"empty").Err() }()
	waitFor(t, 10*time.Second, "the BLPOP sent to Redis", func() bool { return p.Stats().Up > sent })
	var (
		wg   sync.WaitGroup
		oks  atomic.Int64
		errs = make([]error, workers)
	)
	for w := range workers {
		wg.Go(func() {
			for {
				if err := c.Incr(ctx, prefix+"n").Err(); err != nil {
					errs[w] = err
					return
				}
				oks.Add(1)
			}
		})
	}
	waitFor(t, 10*time.Second, "commands flowing", func() bool { return oks.Load() > 100 })

	p.Cut()
	select {
	case err := <-blpop:
		if err == nil || errors.Is(err, redis.Nil) || isTimeout(err) {
			t.Errorf("BLPOP in flight across the cut: %v; want a connection error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("BLPOP in flight still waiting 10s after the cut")
	}
	wg.Wait()
	for w, err := range errs {
		if isTimeout(err) {
			t.Errorf("worker %d: %v; want a connection error", w, err)
		}
	}
	// New commands, on new connections, fail at once too.
	before := p.Stats().Refused
	if err := c.Get(ctx, prefix+"n").Err(); err == nil || isTimeout(err) {
		t.Errorf("GET through a cut path: %v; want a connection error", err)
	}
	if st := p.Stats(); st.Cut == 0 || st.Refused <= before || st.Open != 0 {
		t.Errorf("stats after the cut: %+v", st)
	}

	p.Heal()
	n, err := c.Get(ctx, prefix+"n").Int64()
	if err != nil {
		t.Fatalf("GET after Heal: %v", err)
	}
	if n < oks.Load() {
		t.Errorf("counter %d after %d acknowledged increments", n, oks.Load())
	}
}

// A blackhole makes commands hang until the client's read timeout, on the
// connections open and on new ones; what they sent reaches Redis once the
// path heals, and the service comes back.
func TestProxyRedisBlackhole(t *testing.T) {
	p := activetest.NewProxy(t, testenv.RedisAddr(t))
	const timeout = 300 * time.Millisecond
	opts := redis.Options{PoolSize: 1, ReadTimeout: timeout, WriteTimeout: timeout}
	c, prefix := redisBehind(t, p, opts)
	ctx := t.Context()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}

	p.Blackhole()
	start := time.Now()
	err := c.Set(ctx, prefix+"k", "sent during the partition", 0).Err()
	if !isTimeout(err) {
		t.Errorf("SET through a blackhole: %v; want the client's timeout", err)
	}
	if took := time.Since(start); took < timeout {
		t.Errorf("SET through a blackhole failed after %v, before the %v read timeout", took, timeout)
	}
	// A new client: its dial succeeds, its handshake hangs.
	fresh, _ := redisBehind(t, p, opts)
	start = time.Now()
	if err := fresh.Ping(ctx).Err(); !isTimeout(err) {
		t.Errorf("PING of a new client through a blackhole: %v; want the client's timeout", err)
	}
	if took := time.Since(start); took < timeout {
		t.Errorf("PING of a new client failed after %v, before the %v read timeout", took, timeout)
	}

	p.Heal()
	// The SET the client gave up on was held, not dropped: it lands now,
	// the ambiguous outcome of a write cut by a partition.
	direct := testenv.Redis(t)
	waitFor(t, 10*time.Second, "the held SET reaching Redis", func() bool {
		v, err := direct.Get(ctx, prefix+"k").Result()
		return err == nil && v == "sent during the partition"
	})
	for _, cl := range []*redis.Client{c, fresh} {
		if err := cl.Ping(ctx).Err(); err != nil {
			t.Errorf("PING after Heal: %v", err)
		}
	}
}

// A blackhole of the replies alone: the command runs, and its client,
// hearing nothing, times out; a write whose outcome it cannot know.
func TestProxyRedisRepliesLost(t *testing.T) {
	p := activetest.NewProxy(t, testenv.RedisAddr(t))
	const timeout = 300 * time.Millisecond
	c, prefix := redisBehind(t, p, redis.Options{PoolSize: 1, ReadTimeout: timeout, WriteTimeout: timeout})
	ctx := t.Context()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	p.Blackhole(activetest.Downstream)
	if err := c.Set(ctx, prefix+"k", "ran", 0).Err(); !isTimeout(err) {
		t.Errorf("SET with its reply held: %v; want the client's timeout", err)
	}
	// Before Heal: the write is there.
	if v, err := testenv.Redis(t).Get(ctx, prefix+"k").Result(); err != nil || v != "ran" {
		t.Errorf("the SET whose reply was lost: %q, %v; want it run", v, err)
	}
	p.Heal()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Errorf("PING after Heal: %v", err)
	}
}

// Latency is added per direction. Only lower bounds are asserted.
func TestProxyRedisLatency(t *testing.T) {
	p := activetest.NewProxy(t, testenv.RedisAddr(t))
	c, _ := redisBehind(t, p, redis.Options{PoolSize: 1})
	ctx := t.Context()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ up, down time.Duration }{
		{up: 100 * time.Millisecond},
		{down: 150 * time.Millisecond},
		{up: 100 * time.Millisecond, down: 150 * time.Millisecond},
	} {
		p.SetLatency(activetest.Upstream, tc.up)
		p.SetLatency(activetest.Downstream, tc.down)
		start := time.Now()
		if err := c.Ping(ctx).Err(); err != nil {
			t.Fatalf("up %v, down %v: %v", tc.up, tc.down, err)
		}
		if took := time.Since(start); took < tc.up+tc.down {
			t.Errorf("up %v, down %v: PING took %v", tc.up, tc.down, took)
		}
	}
	p.Heal()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Errorf("PING after Heal: %v", err)
	}
}

// Concurrent increments while the path is cut, blackholed (both ways or
// the replies alone), slowed and healed at random under them: the proxy
// delivers each command at most once, so the counter ends between the
// increments acknowledged and those sent (acknowledged or failed: a failed
// one may have run).
func TestProxyRedisFlipsUnderLoad(t *testing.T) {
	p := activetest.NewProxy(t, testenv.RedisAddr(t))
	const workers = 8
	c, prefix := redisBehind(t, p, redis.Options{PoolSize: workers, ReadTimeout: 100 * time.Millisecond, WriteTimeout: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(t.Context())
	var (
		wg           sync.WaitGroup
		acked, faild atomic.Int64
	)
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := c.Incr(context.WithoutCancel(ctx), prefix+"n").Err(); err != nil {
					faild.Add(1)
				} else {
					acked.Add(1)
				}
			}
		})
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 60 {
		switch rng.IntN(5) {
		case 4:
			p.Blackhole(activetest.Downstream)
		case 0:
			p.Cut()
		case 1:
			p.Blackhole()
		case 2:
			p.SetLatency(activetest.Direction(rng.IntN(2)), time.Duration(rng.IntN(20))*time.Millisecond)
		case 3:
			p.Heal()
		}
		time.Sleep(time.Duration(rng.IntN(40)) * time.Millisecond) // pacing the faults, not waiting for a condition
	}
	p.Heal()
	before := acked.Load()
	waitFor(t, 10*time.Second, "increments acknowledged after Heal", func() bool { return acked.Load() > before+50 })
	cancel()
	wg.Wait()

	// Every increment sent has ended; once the client has closed its
	// connections, the proxy closes each after its last byte reached
	// Redis, the ones a blackhole held included.
	_ = c.Close()
	waitFor(t, 10*time.Second, "every connection drained and closed", func() bool { return p.Stats().Open == 0 })
	n, err := testenv.Redis(t).Get(t.Context(), prefix+"n").Int64()
	if err != nil {
		t.Fatal(err)
	}
	a, f := acked.Load(), faild.Load()
	t.Logf("%d acknowledged, %d failed, counter %d; %+v", a, f, n, p.Stats())
	if f == 0 {
		t.Error("no increment failed: the faults did not reach the commands")
	}
	if n < a || n > a+f {
		t.Errorf("counter %d: want between %d acknowledged and %d sent", n, a, a+f)
	}
}
