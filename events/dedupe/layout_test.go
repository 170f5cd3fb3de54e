package dedupe

// Tests of RedisStore's layout that need its insides: the clock offset and
// the shard of an ID.

import (
	"context"
	"errors"
	"hash/fnv"
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

func layoutStore(t *testing.T, cfg RedisConfig) (*RedisStore, redis.UniversalClient) {
	t.Helper()
	c := testenv.Redis(t)
	cfg.Prefix = testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, c, cfg.Prefix)
	s, err := NewRedisStore(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}

// TestRedisSkewedClock: a store whose idea of Redis's clock is a generation
// off names the wrong hashes; the scripts refuse, the store learns Redis's
// clock from the refusal and calls again, and the records land where every
// other instance looks.
func TestRedisSkewedClock(t *testing.T) {
	s, _ := layoutStore(t, RedisConfig{Retention: time.Hour})
	ctx := context.Background()
	for _, skew := range []time.Duration{time.Hour, -time.Hour, 3 * time.Hour} {
		s.offset.Store(skew.Milliseconds())
		id := "e" + strconv.Itoa(int(skew/time.Hour))
		c, err := s.Claim(ctx, "g", id, time.Minute)
		if err != nil || c.Status != Claimed {
			t.Fatalf("skew %v: Claim: %+v, %v", skew, c, err)
		}
		if off := s.offset.Load(); off > 5000 || off < -5000 {
			t.Fatalf("skew %v: offset %d ms after a reply, want Redis's (about 0)", skew, off)
		}
		s.offset.Store(skew.Milliseconds())
		if err := s.Done(ctx, c); err != nil {
			t.Fatalf("skew %v: Done: %v", skew, err)
		}
		// A store with a true clock sees it done.
		other, err := NewRedisStore(s.c, RedisConfig{Prefix: s.prefix, Retention: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if d, err := other.Claim(ctx, "g", id, time.Minute); err != nil || d.Status != Done {
			t.Fatalf("skew %v: Claim by another instance: %+v, %v; want done", skew, d, err)
		}
	}
}

// TestRedisRetentionByGeneration: a done mark is kept for at least the
// retention, and reclaimed (the event runs again) within three.
func TestRedisRetentionByGeneration(t *testing.T) {
	const retention = 400 * time.Millisecond
	s, c := layoutStore(t, RedisConfig{Retention: retention, Shards: 2})
	ctx := context.Background()
	cl, err := s.Claim(ctx, "g", "e", retention)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Done(ctx, cl); err != nil {
		t.Fatal(err)
	}
	marked := time.Now()
	for time.Since(marked) < retention*9/10 {
		if d, err := s.Claim(ctx, "g", "e", retention); err != nil || d.Status != Done {
			t.Fatalf("%v after Done: %+v, %v; want done (retention %v)", time.Since(marked), d, err, retention)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for {
		d, err := s.Claim(ctx, "g", "e", retention)
		if err != nil {
			t.Fatal(err)
		}
		if d.Status == Claimed {
			break
		}
		if time.Since(marked) > 3*retention+200*time.Millisecond {
			t.Fatalf("still %v %v after Done; want forgotten within 3× the retention", d.Status, time.Since(marked))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The expired generations are gone from Redis, not only unread.
	keys, err := c.Keys(ctx, s.prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) > 2 {
		t.Fatalf("%d keys left: %v; want at most the current generation of each shard", len(keys), keys)
	}
}

// TestRedisShardsSpread: the IDs of a batch spread over the shards, each
// shard's records in its own hash, and a batch over all of them is one
// script call on a standalone server.
func TestRedisShardsSpread(t *testing.T) {
	s, c := layoutStore(t, RedisConfig{Shards: 8})
	ctx := context.Background()
	ids := make([]string, 400)
	for i := range ids {
		ids[i] = events.NewID()
	}
	cs, err := s.ClaimBatch(ctx, "g", ids, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	perShard := map[uint32]int{}
	for _, id := range ids {
		perShard[s.shard(id)]++
	}
	if len(perShard) != 8 {
		t.Fatalf("400 IDs over %d shards, want 8", len(perShard))
	}
	g := s.generation()
	for k, n := range perShard {
		key := s.genKeys("g", k, g)[0]
		if got := c.HLen(ctx, key).Val(); got != int64(n) {
			t.Fatalf("shard %d: %d fields in %s, want %d", k, got, key, n)
		}
	}
	if _, err := s.DoneBatch(ctx, cs); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if d, _ := s.Claim(ctx, "g", id, time.Minute); d.Status != Done {
			t.Fatalf("%s: %v after DoneBatch", id, d.Status)
		}
	}
}

// TestRedisDoneBatchChecksOldClaims: DoneBatch marks unread only claims
// whose leases surely hold; an older claim is read, and one another
// claimer took over is reported lost.
func TestRedisDoneBatchChecksOldClaims(t *testing.T) {
	s, _ := layoutStore(t, RedisConfig{})
	ctx := context.Background()
	cs, err := s.ClaimBatch(ctx, "g", []string{"a", "b"}, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(60 * time.Millisecond) // both leases end
	taken, err := s.Claim(ctx, "g", "b", time.Minute)
	if err != nil || taken.Status != Claimed {
		t.Fatalf("takeover of b: %+v, %v", taken, err)
	}
	res, err := s.DoneBatch(ctx, cs)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(res[0], ErrLeaseLost) || !errors.Is(res[1], ErrLeaseLost) {
		t.Fatalf("DoneBatch after the leases ended: %v; want ErrLeaseLost for both", res)
	}
	// Both are marked done all the same (the effects happened); the
	// successor of b can no longer finish its claim.
	for _, id := range []string{"a", "b"} {
		if d, _ := s.Claim(ctx, "g", id, time.Minute); d.Status != Done {
			t.Fatalf("%s: %v after DoneBatch, want done", id, d.Status)
		}
	}
	if err := s.Done(ctx, taken); err != nil && !errors.Is(err, ErrLeaseLost) {
		t.Fatal(err)
	}
}

// TestRedisDoneWithContention: DoneWith on a shard that other events keep
// writing (one shard, batches claimed and marked in a loop) neither fails
// nor retries (a WATCH on the shard's hashes would), applies the effect
// exactly once and hands back its reply.
func TestRedisDoneWithContention(t *testing.T) {
	s, c := layoutStore(t, RedisConfig{Shards: 1})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	var writes atomic.Int64
	for range 2 {
		wg.Go(func() {
			for ctx.Err() == nil {
				ids := make([]string, 20)
				for i := range ids {
					ids[i] = events.NewID()
				}
				cs, err := s.ClaimBatch(ctx, "g", ids, time.Minute)
				if err != nil {
					return
				}
				if _, err := s.DoneBatch(ctx, cs); err != nil {
					return
				}
				writes.Add(1)
			}
		})
	}
	const n = 30
	for i := range n {
		id := "effect-" + strconv.Itoa(i)
		cl, err := s.Claim(ctx, "g", id, time.Minute)
		if err != nil || cl.Status != Claimed {
			t.Fatalf("Claim %s: %+v, %v", id, cl, err)
		}
		calls := 0
		var incr *redis.IntCmd
		err = s.DoneWith(ctx, cl, func(ctx context.Context, p redis.Pipeliner) error {
			calls++
			incr = p.Incr(ctx, s.Key("g", id)+":count")
			return nil
		})
		if err != nil {
			t.Fatalf("DoneWith %s under contention: %v", id, err)
		}
		if calls != 1 || incr.Val() != 1 || incr.Err() != nil {
			t.Fatalf("%s: fn called %d times, INCR reply %d, %v; want once, 1", id, calls, incr.Val(), incr.Err())
		}
		if got := c.Get(ctx, s.Key("g", id)+":count").Val(); got != "1" {
			t.Fatalf("%s: effect count %q, want 1", id, got)
		}
	}
	cancel()
	wg.Wait()
	if writes.Load() == 0 {
		t.Fatal("no concurrent batch ran: the test proved nothing")
	}
}

// TestRedisDoneWithCluster: on a Redis Cluster the effect's keys, named
// with Key, are in the record's slot, so the script may write them; the
// replies of each command type come back.
func TestRedisDoneWithCluster(t *testing.T) {
	c := testenv.RedisCluster(t)
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, c, prefix)
	s, err := NewRedisStore(c, RedisConfig{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 10 { // IDs over several shards, so several nodes
		id := "order-" + strconv.Itoa(i)
		cl, err := s.Claim(ctx, "g", id, time.Minute)
		if err != nil || cl.Status != Claimed {
			t.Fatalf("Claim: %+v, %v", cl, err)
		}
		k := s.Key("g", id)
		var (
			set  *redis.StatusCmd
			get  *redis.StringCmd
			nx   *redis.BoolCmd
			incr *redis.IntCmd
			do   *redis.Cmd
			miss *redis.StringCmd
			ttl  *redis.DurationCmd
		)
		err = s.DoneWith(ctx, cl, func(ctx context.Context, p redis.Pipeliner) error {
			set = p.Set(ctx, k+":a", "x", 0)
			get = p.Get(ctx, k+":a")
			nx = p.SetNX(ctx, k+":a", "y", 0)
			incr = p.IncrBy(ctx, k+":n", 5)
			do = p.Do(ctx, "HSET", k+":h", "f", "v")
			miss = p.Get(ctx, k+":missing")
			ttl = p.TTL(ctx, k+":a")
			return nil
		})
		if err != nil {
			t.Fatalf("DoneWith %s: %v", id, err)
		}
		if set.Val() != "OK" || get.Val() != "x" || nx.Val() || nx.Err() != nil || incr.Val() != 5 || do.Val() != int64(1) || !errors.Is(miss.Err(), redis.Nil) {
			t.Fatalf("replies: set %q get %q setnx %v/%v incr %d hset %v missing %v", set.Val(), get.Val(), nx.Val(), nx.Err(), incr.Val(), do.Val(), miss.Err())
		}
		if !errors.Is(ttl.Err(), ErrNoReply) {
			t.Fatalf("TTL reply: %v, %v; want ErrNoReply", ttl.Val(), ttl.Err())
		}
		if d, _ := s.Claim(ctx, "g", id, time.Minute); d.Status != Done {
			t.Fatalf("%s after DoneWith: %v", id, d.Status)
		}
	}
}

func TestRedisConfigErrors(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	for name, cfg := range map[string]RedisConfig{
		"negative shards": {Shards: -1},
		"too many shards": {Shards: 1025},
		"brace in prefix": {Prefix: "a{b}:"},
		"tiny retention":  {Retention: time.Microsecond},
		"negative":        {Retention: -time.Second},
	} {
		if _, err := NewRedisStore(c, cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", name, err)
		}
	}
}

// TestRedisDoneWithErrors: DoneWith's failures to reach Redis are marked
// events.Unavailable (a subscriber waits them out); the effect's own
// failure (an error reply from one of its commands) and ErrLeaseLost are
// not.
func TestRedisDoneWithErrors(t *testing.T) {
	s, c := layoutStore(t, RedisConfig{})
	ctx := context.Background()
	cl, err := s.Claim(ctx, "g", "e", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	k := s.Key("g", "e")
	if err := c.Set(ctx, k+":str", "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	err = s.DoneWith(ctx, cl, func(ctx context.Context, p redis.Pipeliner) error {
		p.LPush(ctx, k+":str", "y") // WRONGTYPE
		return nil
	})
	if err == nil || events.IsUnavailable(err) {
		t.Fatalf("DoneWith with a failing effect: %v; want the effect's error, not Unavailable", err)
	}
	expired := cl
	expired.Token = "someone-else"
	if err := s.DoneWith(ctx, expired, func(context.Context, redis.Pipeliner) error { return nil }); !errors.Is(err, ErrLeaseLost) || events.IsUnavailable(err) {
		t.Fatalf("DoneWith without the claim: %v; want ErrLeaseLost", err)
	}
	down := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	defer down.Close()
	ds, err := NewRedisStore(down, RedisConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := ds.DoneWith(ctx, cl, func(context.Context, redis.Pipeliner) error { return nil }); err == nil || !events.IsUnavailable(err) {
		t.Fatalf("DoneWith with Redis unreachable: %v; want Unavailable", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := ds.DoneWith(cctx, cl, func(context.Context, redis.Pipeliner) error { return nil }); err == nil || events.IsUnavailable(err) {
		t.Fatalf("DoneWith with ctx cancelled: %v; want ctx's error, not Unavailable", err)
	}
}

// failAfterPipeline lets a pipeline run and then reports an error, once: a
// reply lost after the server applied the writes.
type failAfterPipeline struct{ armed *atomic.Bool }

func (h failAfterPipeline) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h failAfterPipeline) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if err == nil && strings.HasPrefix(cmd.Name(), "eval") && h.armed.CompareAndSwap(true, false) {
			return errors.New("induced: reply lost")
		}
		return err
	}
}
func (h failAfterPipeline) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if err == nil && len(cmds) > 0 && strings.HasPrefix(cmds[0].Name(), "eval") && h.armed.CompareAndSwap(true, false) {
			return errors.New("induced: reply lost")
		}
		return err
	}
}

// TestRedisClaimBatchFailureReleases: a claim call that failed after the
// server took the claims gives them back, so that the batch tried again (or
// another instance) finds the events free at once instead of busy for a
// whole lease.
func TestRedisClaimBatchFailureReleases(t *testing.T) {
	c := testenv.Redis(t)
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, c, prefix)
	var armed atomic.Bool
	hooked := redis.NewClient(&redis.Options{Addr: c.Options().Addr})
	defer hooked.Close()
	hooked.AddHook(failAfterPipeline{&armed})
	s, err := NewRedisStore(hooked, RedisConfig{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, n := range []int{1, 1500} { // one call, and two calls in one pipeline
		ids := make([]string, n)
		for i := range ids {
			ids[i] = events.NewID()
		}
		armed.Store(true)
		if _, err := s.ClaimBatch(ctx, "g", ids, time.Minute); err == nil {
			t.Fatalf("%d IDs: ClaimBatch with its reply lost succeeded", n)
		}
		cs, err := s.ClaimBatch(ctx, "g", ids, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		for i, cl := range cs {
			if cl.Status != Claimed {
				t.Fatalf("%d IDs: %s is %v after the failed call; want claimed (released)", n, ids[i], cl.Status)
			}
		}
	}
}

// TestRedisShardIsFNV1a: the shard of an ID is FNV-1a of it, as the layout
// says; a change would move every record to another hash.
func TestRedisShardIsFNV1a(t *testing.T) {
	s, err := NewRedisStore(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), RedisConfig{Shards: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer s.c.Close()
	for _, id := range []string{"", "a", "order-1", events.NewID(), "ünïcode"} {
		h := fnv.New32a()
		_, _ = h.Write([]byte(id))
		if got, want := s.shard(id), h.Sum32()%1024; got != want {
			t.Errorf("shard(%q) = %d, want %d", id, got, want)
		}
	}
}

// TestRedisGenerationExpiry: every script that writes a generation's hash
// sets its expiry to a generation after the next one ends, (g + 3) times
// the retention: the time Go passes them.
func TestRedisGenerationExpiry(t *testing.T) {
	const retention = time.Hour
	s, c := layoutStore(t, RedisConfig{Retention: retention, Shards: 1})
	ctx := context.Background()
	check := func(what string) {
		t.Helper()
		keys, err := c.Keys(ctx, s.prefix+"*").Result()
		if err != nil || len(keys) != 1 {
			t.Fatalf("%s: keys %v, %v; want one hash", what, keys, err)
		}
		g, err := strconv.ParseInt(keys[0][strings.LastIndex(keys[0], ":")+1:], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		ttl, err := c.PTTL(ctx, keys[0]).Result()
		if err != nil {
			t.Fatal(err)
		}
		want := time.Until(time.UnixMilli((g + 3) * retention.Milliseconds()))
		if d := ttl - want; d < -time.Minute || d > time.Minute {
			t.Fatalf("%s: %s expires in %v, want %v", what, keys[0], ttl, want)
		}
		if err := c.Persist(ctx, keys[0]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	cl, err := s.Claim(ctx, "g", "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	check("Claim")
	if err := s.Done(ctx, cl); err != nil {
		t.Fatal(err)
	}
	check("Done")
	cs, err := s.ClaimBatch(ctx, "g", []string{"b"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Persist(ctx, s.genKeys("g", 0, s.generation())[0]).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DoneBatch(ctx, cs); err != nil {
		t.Fatal(err)
	}
	check("DoneBatch")
	cl, err = s.Claim(ctx, "g", "c", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Persist(ctx, s.genKeys("g", 0, s.generation())[0]).Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.DoneWith(ctx, cl, func(context.Context, redis.Pipeliner) error { return nil }); err != nil {
		t.Fatal(err)
	}
	check("DoneWith")
}

// TestRedisScriptsReadEachValue: the scripts read a claim's value once for
// a run of IDs that share it (and, for done and release, their token), so
// a batch whose IDs hold the same value with other tokens, or other values
// in turn, must still get each ID's own answer.
func TestRedisScriptsReadEachValue(t *testing.T) {
	s, c := layoutStore(t, RedisConfig{Retention: 2 * time.Hour, Shards: 1})
	ctx := context.Background()
	if _, err := s.Claim(ctx, "g", "x", time.Minute); err != nil { // learns Redis's clock
		t.Fatal(err)
	}
	key := s.genKeys("g", 0, s.generation())[0]
	live := strconv.FormatInt(time.Now().Add(time.Duration(s.offset.Load())*time.Millisecond+time.Hour).UnixMilli(), 10)
	records := map[string]string{
		"a": "c:T1:" + live,
		"b": "c:T1:" + live,
		"c": "c:T1:1",
		"d": "d",
		"e": "c:T1:" + live,
		"f": "c:T2:" + live,
	}
	set := func() {
		t.Helper()
		if err := c.Del(ctx, key).Err(); err != nil {
			t.Fatal(err)
		}
		if err := c.HSet(ctx, key, records).Err(); err != nil {
			t.Fatal(err)
		}
	}

	set()
	ids := []string{"a", "b", "c", "d", "e", "f"}
	cs, err := s.ClaimBatch(ctx, "g", ids, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	wantStatus := []Status{Busy, Busy, Claimed, Done, Busy, Busy}
	for i, cl := range cs {
		if cl.Status != wantStatus[i] || cl.Status == Busy && cl.Remaining < 50*time.Minute {
			t.Errorf("ClaimBatch: %s %v (%v left), want %v", cl.ID, cl.Status, cl.Remaining, wantStatus[i])
		}
	}

	set()
	held := func(id, token string) Claim { return Claim{Group: "g", ID: id, Token: token, Status: Claimed} }
	if err := s.ReleaseBatch(ctx, []Claim{held("a", "T2"), held("b", "T1"), held("c", "T1"), held("d", "T1"), held("e", "T2"), held("f", "T2")}); err != nil {
		t.Fatal(err)
	}
	left, err := c.HGetAll(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		_, kept := left[id]
		if want := id == "a" || id == "d" || id == "e"; kept != want {
			t.Errorf("ReleaseBatch: %s kept %v, want %v", id, kept, want)
		}
	}

	set()
	res, err := s.DoneBatch(ctx, []Claim{held("a", "T1"), held("b", "T2"), held("c", "T1"), held("d", "T1"), held("e", "T1"), held("f", "T1")})
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if lost := errors.Is(res[i], ErrLeaseLost); lost != (id == "b" || id == "c" || id == "f") {
			t.Errorf("DoneBatch: %s %v", id, res[i])
		}
	}
	if left, err = c.HGetAll(ctx, key).Result(); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if left[id] != "d" {
			t.Errorf("DoneBatch: %s holds %q, want done", id, left[id])
		}
	}
}
