package dedupe

// Tests of defects found in the review of the generation layout and the
// Unavailable rule.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/internal/testenv"
)

// TestRedisLeaseLongerThanRetention: a claim is a record of a generation,
// read only while that generation or the next is current; a lease longer
// than the retention would be taken over by another claimer while it still
// held. The store refuses such a lease instead.
func TestRedisLeaseLongerThanRetention(t *testing.T) {
	const retention = 100 * time.Millisecond
	s, _ := layoutStore(t, RedisConfig{Retention: retention})
	ctx := context.Background()
	const lease = time.Second
	first, err := s.Claim(ctx, "g", "e", lease)
	if errors.Is(err, ErrConfig) {
		if _, err := New(s, Config{Group: "g", Lease: lease}); !errors.Is(err, ErrConfig) {
			t.Fatalf("New with a Lease over the RedisStore's Retention: %v, want ErrConfig", err)
		}
		return
	}
	if err != nil || first.Status != Claimed {
		t.Fatalf("Claim: %+v, %v", first, err)
	}
	start := time.Now()
	for time.Since(start) < lease/2 {
		c, err := s.Claim(ctx, "g", "e", lease)
		if err != nil {
			t.Fatal(err)
		}
		if c.Status == Claimed {
			t.Fatalf("claimed again %v into a lease of %v (retention %v)", time.Since(start), lease, retention)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// configStore fails every Claim with ErrConfig.
type configStore struct{ Store }

func (configStore) Claim(context.Context, string, string, time.Duration) (Claim, error) {
	return Claim{}, fmt.Errorf("%w: bad", ErrConfig)
}

// TestMiddlewareConfigErrorNotUnavailable: a configuration error is not the
// store being down: waiting does not mend it, so it is not marked
// events.Unavailable (which a subscriber would retry forever).
func TestMiddlewareConfigErrorNotUnavailable(t *testing.T) {
	mw, err := Middleware(configStore{}, Config{Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	err = mw(func(context.Context, events.Event) error { return nil })(context.Background(), events.New("/t", "t", nil))
	if !errors.Is(err, ErrConfig) || events.IsUnavailable(err) {
		t.Fatalf("err %v: want ErrConfig, not Unavailable", err)
	}
}

// TestRedisBigBatch: a batch of more than one script call's IDs (split by
// shard and by maxBatchKeys), with repeated IDs and an empty script cache
// on some nodes, is claimed, marked done (trusted and checked alike) and
// released where a second instance looks, on a standalone server and on a
// Cluster.
func TestRedisBigBatch(t *testing.T) {
	for _, name := range []string{"redis", "rediscluster"} {
		t.Run(name, func(t *testing.T) {
			var c redis.UniversalClient
			var flush func()
			ctx := context.Background()
			if name == "redis" {
				rc := testenv.Redis(t)
				c, flush = rc, func() { _ = rc.ScriptFlush(ctx).Err() }
			} else {
				cc := testenv.RedisCluster(t)
				// Only the first master forgets the scripts: a
				// pipeline partly runs, partly gets NOSCRIPT.
				c, flush = cc, func() {
					var once atomic.Bool
					_ = cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
						if once.CompareAndSwap(false, true) {
							return n.ScriptFlush(ctx).Err()
						}
						return nil
					})
				}
			}
			prefix := testenv.Name(t) + ":"
			testenv.CleanupRedisPrefix(t, c, prefix)
			// One shard: one HSET of 2000 arguments per call.
			shards := 1
			if name == "rediscluster" {
				shards = 4
			}
			a, err := NewRedisStore(c, RedisConfig{Prefix: prefix, Shards: shards})
			if err != nil {
				t.Fatal(err)
			}
			b, _ := NewRedisStore(c, RedisConfig{Prefix: prefix, Shards: shards})
			const n = 2500
			ids := make([]string, 0, n+3)
			for i := range n {
				ids = append(ids, "e"+strconv.Itoa(i))
			}
			ids = append(ids, "e7", "e1500", "e2499")
			flush()
			cs, err := a.ClaimBatch(ctx, "g", ids, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			for i, cl := range cs {
				want := Claimed
				if i >= n {
					want = Busy
				}
				if cl.ID != ids[i] || cl.Status != want {
					t.Fatalf("claim %d: %+v, want %v", i, cl, want)
				}
			}
			other, err := b.ClaimBatch(ctx, "g", ids[:n], time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			for i, cl := range other {
				if cl.Status != Busy {
					t.Fatalf("second instance's claim %d: %+v, want busy", i, cl)
				}
			}
			flush()
			// The first half trusted (marked unread), the second checked.
			for i := n / 2; i < n; i++ {
				cs[i].held = time.Time{}
			}
			for _, part := range [][]Claim{cs[:n/2], cs[n/2 : n]} {
				res, err := a.DoneBatch(ctx, part)
				if err != nil {
					t.Fatal(err)
				}
				for i, e := range res {
					if e != nil {
						t.Fatalf("DoneBatch %s: %v", part[i].ID, e)
					}
				}
			}
			done, err := b.ClaimBatch(ctx, "g", ids[:n], time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			for i, cl := range done {
				if cl.Status != Done {
					t.Fatalf("after DoneBatch, claim %d: %+v, want done", i, cl)
				}
			}
			// Released claims are free for the other instance at once.
			cs, err = a.ClaimBatch(ctx, "g2", ids[:n], time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			flush()
			if err := a.ReleaseBatch(ctx, cs); err != nil {
				t.Fatal(err)
			}
			free, err := b.ClaimBatch(ctx, "g2", ids[:n], time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			for i, cl := range free {
				if cl.Status != Claimed {
					t.Fatalf("after ReleaseBatch, claim %d: %+v, want claimed", i, cl)
				}
			}
		})
	}
}

// TestRedisDoneWithReplies: the commands DoneWith runs in its script get
// the arguments and replies they would get from a pipeline: durations,
// byte slices and bools as go-redis encodes them, nil replies as redis.Nil
// or false, arrays on a generic command, and commands without keys.
func TestRedisDoneWithReplies(t *testing.T) {
	s, c := layoutStore(t, RedisConfig{})
	ctx := context.Background()
	cl, err := s.Claim(ctx, "g", "e", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	k := s.Key("g", "e")
	var (
		set    *redis.StatusCmd
		setnx  *redis.BoolCmd
		setnx2 *redis.BoolCmd
		get    *redis.StringCmd
		miss   *redis.StringCmd
		hset   *redis.IntCmd
		all    *redis.Cmd
		ping   *redis.StatusCmd
		incr   *redis.IntCmd
		exp    *redis.BoolCmd
	)
	err = s.DoneWith(ctx, cl, func(ctx context.Context, p redis.Pipeliner) error {
		set = p.Set(ctx, k+":s", []byte("v\x00w"), 90*time.Second)
		setnx = p.SetNX(ctx, k+":nx", "1", 1500*time.Millisecond)
		setnx2 = p.SetNX(ctx, k+":nx", "2", time.Minute)
		get = p.Get(ctx, k+":s")
		miss = p.Get(ctx, k+":missing")
		hset = p.HSet(ctx, k+":h", "b", true, "n", 7)
		all = p.Do(ctx, "HGETALL", k+":h")
		ping = p.Ping(ctx)
		incr = p.IncrBy(ctx, k+":n", 5)
		exp = p.Expire(ctx, k+":n", time.Hour)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := set.Result(); v != "OK" || err != nil {
		t.Errorf("SET: %q, %v", v, err)
	}
	if ttl := c.TTL(ctx, k+":s").Val(); ttl <= 80*time.Second || ttl > 90*time.Second {
		t.Errorf("SET's TTL %v, want 90s", ttl)
	}
	if ttl := c.PTTL(ctx, k+":nx").Val(); ttl <= time.Second || ttl > 1500*time.Millisecond {
		t.Errorf("SET NX's TTL %v, want 1.5s", ttl)
	}
	if v, err := setnx.Result(); !v || err != nil {
		t.Errorf("first SETNX: %v, %v; want true", v, err)
	}
	if v, err := setnx2.Result(); v || err != nil {
		t.Errorf("second SETNX: %v, %v; want false", v, err)
	}
	if v, err := get.Result(); v != "v\x00w" || err != nil {
		t.Errorf("GET: %q, %v", v, err)
	}
	if _, err := miss.Result(); !errors.Is(err, redis.Nil) {
		t.Errorf("GET of a missing key: %v, want redis.Nil", err)
	}
	if v, err := hset.Result(); v != 2 || err != nil {
		t.Errorf("HSET: %d, %v", v, err)
	}
	if v, err := all.StringSlice(); err != nil || len(v) != 4 || v[1] != "1" || v[3] != "7" {
		t.Errorf("HGETALL: %q, %v; want b 1 n 7", v, err)
	}
	if v, err := ping.Result(); v != "PONG" || err != nil {
		t.Errorf("PING: %q, %v", v, err)
	}
	if v, err := incr.Result(); v != 5 || err != nil {
		t.Errorf("INCRBY: %d, %v", v, err)
	}
	if v, err := exp.Result(); !v || err != nil {
		t.Errorf("EXPIRE: %v, %v", v, err)
	}
	if d, err := s.Claim(ctx, "g", "e", time.Minute); err != nil || d.Status != Done {
		t.Fatalf("after DoneWith: %+v, %v; want done", d, err)
	}
}

// TestRedisRefusedCallUsesItsNodesClock: the offset a store learns is
// shared by its calls, and on a Cluster each reply teaches the clock of its
// own node, so a call refused for another generation may find the offset
// moved again by another node's reply before it calls again. It must call
// again with the generation its own refusal named, not fail after three
// refusals. Here another "node" keeps teaching a clock an hour ahead.
func TestRedisRefusedCallUsesItsNodesClock(t *testing.T) {
	s, _ := layoutStore(t, RedisConfig{Retention: time.Hour})
	ctx := context.Background()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				s.offset.Store(time.Hour.Milliseconds())
				runtime.Gosched()
			}
		}
	})
	defer wg.Wait()
	defer close(stop)
	for i := range 20 {
		id := "e" + strconv.Itoa(i)
		c, err := s.Claim(ctx, "g", id, time.Minute)
		if err != nil || c.Status != Claimed {
			t.Fatalf("Claim %s: %+v, %v", id, c, err)
		}
		cs, err := s.ClaimBatch(ctx, "g", []string{id + "a", id + "b", id + "c"}, time.Minute)
		if err != nil {
			t.Fatalf("ClaimBatch: %v", err)
		}
		if err := s.DoneWith(ctx, c, func(context.Context, redis.Pipeliner) error { return nil }); err != nil {
			t.Fatalf("DoneWith %s: %v", id, err)
		}
		if _, err := s.DoneBatch(ctx, cs); err != nil {
			t.Fatalf("DoneBatch: %v", err)
		}
	}
}

// TestRedisHeldWithinDeadline: the time before which DoneBatch trusts a
// claim without reading it is no later than the deadline Redis holds for
// it, whose lease is in whole ms from Redis's clock in whole ms, for
// leases that are not whole ms too (the server runs on this machine, so
// the two clocks agree).
func TestRedisHeldWithinDeadline(t *testing.T) {
	s, c := layoutStore(t, RedisConfig{Shards: 1})
	ctx := context.Background()
	for i, lease := range []time.Duration{time.Millisecond, 1900 * time.Microsecond, 10500 * time.Microsecond, 10 * time.Millisecond} {
		for j := range 50 {
			id := fmt.Sprintf("e%d-%d", i, j)
			cl, err := s.Claim(ctx, "g", id, lease)
			if err != nil || cl.Status != Claimed {
				t.Fatalf("Claim: %+v, %v", cl, err)
			}
			v, err := c.HGet(ctx, s.genKeys("g", 0, s.generation())[0], id).Result()
			if err != nil {
				// Claimed in the previous generation, just before a
				// boundary: skip.
				continue
			}
			dl, err := strconv.ParseInt(v[strings.LastIndexByte(v, ':')+1:], 10, 64)
			if err != nil {
				t.Fatalf("record %q: %v", v, err)
			}
			if held := cl.held.UnixMicro(); held > dl*1000 {
				t.Fatalf("lease %v: trusted until %d µs, past Redis's deadline %d ms", lease, held, dl)
			}
		}
	}
}

// fakeRedisError is a Redis error reply, as go-redis returns it.
type fakeRedisError string

func (e fakeRedisError) Error() string { return string(e) }
func (fakeRedisError) RedisError()     {}

// TestRedisDoneWithCannotWrite: a Redis that cannot take the write now (out
// of memory, short of the replicas min-replicas-to-write asks for) makes
// DoneWith fail Unavailable, as a replica after a failover does, so the
// subscriber waits for it instead of dead-lettering the event; and so does
// a replica's refusal as Redis before 7 words it, inside a script error.
// The effect's own error stays unmarked in both wordings.
func TestRedisDoneWithCannotWrite(t *testing.T) {
	for msg, want := range map[string]bool{
		"ERR Error running script (call to f_0a): @user_script:1: @user_script: 1: -READONLY You can't write against a read only replica. ":             true,
		"ERR Error running script (call to f_0a): @user_script:1: @user_script: 1: -OOM command not allowed when used memory > 'maxmemory'. ":           true,
		"ERR Error running script (call to f_0a): @user_script:1: @user_script: 1: -WRONGTYPE Operation against a key holding the wrong kind of value ": false,
		"WRONGTYPE Operation against a key holding the wrong kind of value script: 0a, on @user_script:1.":                                              false,
	} {
		if got := events.IsUnavailable(doneWithError(context.Background(), fakeRedisError(msg))); got != want {
			t.Errorf("%q: Unavailable %v, want %v", msg, got, want)
		}
	}

	bin, err := exec.LookPath("redis-server")
	if err != nil {
		testenv.Unavailable(t, "PATH", "no redis-server binary to run a private Redis: %v", err)
	}
	addr := testenv.FreeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", t.TempDir(), "--loglevel", "warning")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	ctx := context.Background()
	for deadline := time.Now().Add(10 * time.Second); c.Ping(ctx).Err() != nil; {
		if time.Now().After(deadline) {
			t.Fatal("the private redis-server does not answer")
		}
		time.Sleep(10 * time.Millisecond) // polling a starting server
	}
	s, err := NewRedisStore(c, RedisConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for i, setting := range [][2]string{{"maxmemory", "1"}, {"min-replicas-to-write", "1"}} {
		cl, err := s.Claim(ctx, "g", "e"+strconv.Itoa(i), time.Minute)
		if err != nil || cl.Status != Claimed {
			t.Fatalf("Claim: %+v, %v", cl, err)
		}
		if err := c.ConfigSet(ctx, setting[0], setting[1]).Err(); err != nil {
			t.Fatal(err)
		}
		err = s.DoneWith(ctx, cl, func(ctx context.Context, p redis.Pipeliner) error {
			p.Set(ctx, s.Key("g", cl.ID)+":x", "1", 0)
			return nil
		})
		if err == nil || !events.IsUnavailable(err) {
			t.Errorf("DoneWith with %s %s: %v; want Unavailable", setting[0], setting[1], err)
		}
		if err := c.ConfigSet(ctx, setting[0], "0").Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRedisGenerationBoundaries: with generations as short as the lease,
// most claims and done marks straddle a generation boundary; another
// instance (one whose idea of Redis's clock is a generation off, too) never
// takes a claim while its lease holds, and sees the done mark for at least
// the retention.
func TestRedisGenerationBoundaries(t *testing.T) {
	const retention = 60 * time.Millisecond
	a, _ := layoutStore(t, RedisConfig{Retention: retention, Shards: 2})
	b, err := NewRedisStore(a.c, RedisConfig{Prefix: a.prefix, Retention: retention, Shards: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 15 {
		id := "e" + strconv.Itoa(i)
		time.Sleep(time.Duration(i) * 7 * time.Millisecond % retention) // start at varied points of a generation
		// Times are taken before the calls they bound: a call that
		// returned less than the retention after claimStart ran within
		// the lease, however slow the replies (the machine is shared).
		claimStart := time.Now()
		cl, err := a.Claim(ctx, "g", id, retention)
		if err != nil || cl.Status != Claimed {
			t.Fatalf("Claim: %+v, %v", cl, err)
		}
		for time.Since(claimStart) < retention/2 {
			b.offset.Store(retention.Milliseconds() * int64(i%3-1))
			c, err := b.Claim(ctx, "g", id, retention)
			if err != nil {
				t.Fatal(err)
			}
			if c.Status == Claimed && time.Since(claimStart) < retention {
				t.Fatalf("%s claimed by another instance %v into a lease of %v", id, time.Since(claimStart), retention)
			}
			time.Sleep(3 * time.Millisecond)
		}
		doneStart := time.Now()
		err = a.Done(ctx, cl)
		if errors.Is(err, ErrLeaseLost) && time.Since(claimStart) >= retention {
			t.Logf("Done %s %v after the claim, too late to judge: %v", id, time.Since(claimStart), err)
			continue
		}
		if err != nil {
			t.Fatalf("Done %s %v after the claim: %v", id, time.Since(claimStart), err)
		}
		for time.Since(doneStart) < retention*9/10 {
			c, err := b.Claim(ctx, "g", id, retention)
			if err != nil {
				t.Fatal(err)
			}
			if c.Status != Done && time.Since(doneStart) < retention {
				t.Fatalf("%s %v %v after Done, want done for the retention (%v)", id, c.Status, time.Since(doneStart), retention)
			}
			time.Sleep(3 * time.Millisecond)
		}
	}
}
