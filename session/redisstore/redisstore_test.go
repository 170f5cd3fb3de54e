package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/redisstore"
	"github.com/activekit/activekit/session/sessiontest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newStore returns a store on c under a prefix unique to t, whose keys are
// removed when t ends.
func newStore(t *testing.T, c redis.UniversalClient, opts ...redisstore.Option) *redisstore.Store {
	t.Helper()
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, c, prefix)
	s, err := redisstore.New(c, append([]redisstore.Option{redisstore.WithPrefix(prefix)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStandalone(t *testing.T) {
	c := testenv.Redis(t)
	sessiontest.Run(t, func(t *testing.T) session.Store { return newStore(t, c) })
}

func TestSentinel(t *testing.T) {
	c := testenv.RedisFailover(t)
	sessiontest.Run(t, func(t *testing.T) session.Store { return newStore(t, c) })
}

func TestSentinelWait(t *testing.T) {
	c := testenv.RedisFailover(t)
	sessiontest.Run(t, func(t *testing.T) session.Store {
		return newStore(t, c, redisstore.WithWait(1, 2*time.Second))
	})
}

func TestCluster(t *testing.T) {
	c := testenv.RedisCluster(t)
	sessiontest.Run(t, func(t *testing.T) session.Store { return newStore(t, c) })
}

func TestWaitNotReplicated(t *testing.T) {
	// The standalone server has no replica: asking for one times out.
	c := testenv.Redis(t)
	s := newStore(t, c, redisstore.WithWait(1, 50*time.Millisecond))
	id := sessiontest.NewID(t, "")
	_, err := s.Apply(t.Context(), id, session.Delta{Create: &session.Create{Absolute: time.Hour}, Idle: time.Hour})
	var nre *redisstore.NotReplicatedError
	if !errors.Is(err, redisstore.ErrNotReplicated) || !errors.As(err, &nre) || nre.Acked != 0 || nre.Wanted != 1 {
		t.Fatalf("Apply with WAIT 1 on a server without replicas: %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}})
	defer cc.Close()
	replicas := func(o redis.ClusterOptions) redis.UniversalClient {
		o.Addrs = []string{"127.0.0.1:1"}
		rc := redis.NewClusterClient(&o)
		t.Cleanup(func() { _ = rc.Close() })
		return rc
	}
	// The same through redis.NewUniversalClient, as most users build it.
	uc := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{"127.0.0.1:1", "127.0.0.1:2"}, ReadOnly: true})
	defer uc.Close()
	for name, tc := range map[string]struct {
		c    redis.UniversalClient
		opts []redisstore.Option
	}{
		"nil client":      {nil, nil},
		"nil option":      {c, []redisstore.Option{nil}},
		"brace in prefix": {c, []redisstore.Option{redisstore.WithPrefix("a{b}")}},
		"negative wait":   {c, []redisstore.Option{redisstore.WithWait(-1, time.Second)}},
		"wait no timeout": {c, []redisstore.Option{redisstore.WithWait(1, 0)}},
		"wait on cluster": {cc, []redisstore.Option{redisstore.WithWait(1, time.Second)}},
		"replica reads":   {replicas(redis.ClusterOptions{ReadOnly: true}), nil},
		"by latency":      {replicas(redis.ClusterOptions{RouteByLatency: true}), nil},
		"randomly":        {replicas(redis.ClusterOptions{RouteRandomly: true}), nil},
		"universal":       {uc, nil},
	} {
		if _, err := redisstore.New(tc.c, tc.opts...); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
	if _, err := redisstore.New(c); err != nil {
		t.Errorf("defaults: %v", err)
	}
	if _, err := redisstore.New(cc); err != nil {
		t.Errorf("a Cluster client reading from primaries: %v", err)
	}
}

func TestUserTagRequired(t *testing.T) {
	s := newStore(t, testenv.Redis(t))
	id := sessiontest.NewID(t, "") // anonymous: no user tag
	_, err := s.Apply(t.Context(), id, session.Delta{Create: &session.Create{Absolute: time.Hour}, User: "alice", Idle: time.Hour})
	if !errors.Is(err, redisstore.ErrUserTag) {
		t.Fatalf("binding a user to an ID without its tag: %v, want ErrUserTag", err)
	}
}

// counter counts the commands sent to Redis.
type counter struct{ n atomic.Int64 }

func (c *counter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}
func (c *counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(1) // a pipeline is one round trip
		return next(ctx, cmds)
	}
}

func TestRoundTrips(t *testing.T) {
	for name, c := range map[string]redis.UniversalClient{
		"standalone": testenv.Redis(t),
		"cluster":    testenv.RedisCluster(t),
	} {
		t.Run(name, func(t *testing.T) {
			s := newStore(t, c)
			ctx := t.Context()
			id := sessiontest.NewID(t, "alice")
			// Warm the script caches (EVALSHA, then EVAL on NOSCRIPT).
			if _, err := s.Apply(ctx, id, session.Delta{Create: &session.Create{Absolute: 24 * time.Hour}, User: "alice", Idle: time.Hour}); err != nil {
				t.Fatal(err)
			}
			if _, _, err := s.Load(ctx, id, time.Hour); err != nil {
				t.Fatal(err)
			}
			// An anonymous ID lands on any master of a Cluster: load
			// enough of them that every master has the script cached
			// (each misses one with probability (2/3)^60).
			for range 60 {
				if _, _, err := s.Load(ctx, sessiontest.NewID(t, ""), time.Hour); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"w": []byte("1")}, Expect: map[string]uint64{"w": 0}, Idle: time.Hour}); err != nil {
				t.Fatal(err)
			}
			cnt := &counter{}
			c.AddHook(cnt)
			measure := func(what string, want int64, fn func() error) {
				t.Helper()
				before := cnt.n.Load()
				if err := fn(); err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				if got := cnt.n.Load() - before; got != want {
					t.Errorf("%s: %d round trips, want %d", what, got, want)
				}
			}
			measure("load with idle refresh", 1, func() error { _, _, err := s.Load(ctx, id, time.Hour); return err })
			measure("apply with CAS", 1, func() error {
				_, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"a": []byte("1")}, Expect: map[string]uint64{"a": 0}, Idle: time.Hour})
				return err
			})
			measure("load missing", 1, func() error { _, _, err := s.Load(ctx, sessiontest.NewID(t, ""), time.Hour); return err })
			// In the last idle period before the absolute deadline, the
			// refresh overshoots it and a second trip caps it.
			last := sessiontest.NewID(t, "")
			if _, err := s.Apply(ctx, last, session.Delta{Create: &session.Create{Absolute: time.Minute}, Idle: time.Second}); err != nil {
				t.Fatal(err)
			}
			measure("load in the last idle period", 2, func() error { _, _, err := s.Load(ctx, last, time.Hour); return err })
			measure("load without refresh", 1, func() error { _, _, err := s.Load(ctx, last, 0); return err })
			// Through an alias: the alias (whose expiry the refresh moved),
			// then the target pipelined with putting the alias's expiry back.
			old := sessiontest.NewID(t, "alice")
			if _, err := s.Apply(ctx, old, session.Delta{Create: &session.Create{Absolute: 24 * time.Hour}, Idle: time.Hour}); err != nil {
				t.Fatal(err)
			}
			if err := s.Alias(ctx, old, id, 1, time.Minute); err != nil {
				t.Fatal(err)
			}
			measure("load through an alias", 2, func() error { _, _, err := s.Load(ctx, old, time.Hour); return err })
		})
	}
}

// TestSizeOfOlderRecords: a record written before the store kept its size
// (no _s field) is measured once, on its first limited write.
func TestSizeOfOlderRecords(t *testing.T) {
	c := testenv.Redis(t)
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, c, prefix)
	s, err := redisstore.New(c, redisstore.WithPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	id := sessiontest.NewID(t, "")
	if _, err := s.Apply(ctx, id, session.Delta{Create: &session.Create{Absolute: time.Hour}, Set: map[string][]byte{"a": []byte("1:2"), "bb": []byte("xyz")}, Idle: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if n, err := c.HDel(ctx, prefix+"s:{"+id+"}", "_s").Result(); err != nil || n != 1 {
		t.Fatalf("HDEL _s: %d %v", n, err)
	}
	// 4 + 5 bytes stored; c adds 2.
	_, err = s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"c": []byte("x")}, Idle: time.Hour, MaxSize: 10})
	var se *session.SizeError
	if !errors.As(err, &se) || se.Size != 11 {
		t.Fatalf("limited write on a record without _s: %v, want a SizeError of 11 bytes", err)
	}
	if _, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"c": []byte("x")}, Idle: time.Hour, MaxSize: 11}); err != nil {
		t.Fatal(err)
	}
	if got, err := c.HGet(ctx, prefix+"s:{"+id+"}", "_s").Result(); err != nil || got != "11" {
		t.Fatalf("_s = %q %v, want 11", got, err)
	}
}

// TestLargeDelta: a delta naming thousands of keys is read and written in
// chunks (Lua's unpack has a limit), and counted exactly.
func TestLargeDelta(t *testing.T) {
	for name, c := range map[string]redis.UniversalClient{"standalone": testenv.Redis(t), "cluster": testenv.RedisCluster(t)} {
		t.Run(name, func(t *testing.T) {
			s := newStore(t, c)
			ctx := t.Context()
			id := sessiontest.NewID(t, "")
			const n = 2500
			set, expect, dels := map[string][]byte{}, map[string]uint64{}, []string{}
			size := 0
			for i := range n {
				k := fmt.Sprintf("key%04d", i)
				set[k] = []byte(k)
				expect[k] = 0
				dels = append(dels, k)
				size += 2 * len(k)
			}
			if _, err := s.Apply(ctx, id, session.Delta{Create: &session.Create{Absolute: time.Hour}, Idle: time.Hour}); err != nil {
				t.Fatal(err)
			}
			_, err := s.Apply(ctx, id, session.Delta{Set: set, Expect: expect, Idle: time.Hour, MaxSize: size - 1})
			var se *session.SizeError
			if !errors.As(err, &se) || se.Size != size {
				t.Fatalf("%d keys one byte over the limit: %v, want a SizeError of %d bytes", n, err, size)
			}
			if _, err := s.Apply(ctx, id, session.Delta{Set: set, Expect: expect, Idle: time.Hour, MaxSize: size}); err != nil {
				t.Fatal(err)
			}
			expect["key1234"] = 1
			if _, err := s.Apply(ctx, id, session.Delta{Set: set, Expect: expect, Idle: time.Hour}); !errors.Is(err, session.ErrConflict) {
				t.Fatalf("stale expectations on %d keys: %v, want a conflict", n, err)
			}
			rec, found, err := s.Load(ctx, id, time.Hour)
			if err != nil || !found || len(rec.Values) != n || rec.Version != 2 {
				t.Fatalf("after the large delta: %d keys, version %d, %v %v", len(rec.Values), rec.Version, found, err)
			}
			if _, err := s.Apply(ctx, id, session.Delta{Delete: dels, Set: map[string][]byte{"a": nil}, Idle: time.Hour, MaxSize: 1}); err != nil {
				t.Fatalf("delete %d keys: %v", n, err)
			}
			rec, _, _ = s.Load(ctx, id, time.Hour)
			if len(rec.Values) != 1 {
				t.Fatalf("%d keys left, want 1", len(rec.Values))
			}
		})
	}
}

// TestDeleteAliasNotReplicated: deleting an alias deletes its target even
// when WAIT reports too few replicas for the alias's deletion (the error is
// still reported); otherwise a Destroy through the old token during the grace
// period would leave the session alive under its new token.
func TestDeleteAliasNotReplicated(t *testing.T) {
	// The standalone server has no replica: every WAIT 1 falls short.
	c := testenv.Redis(t)
	s := newStore(t, c, redisstore.WithWait(1, 20*time.Millisecond))
	ctx := t.Context()
	oldID, newID := sessiontest.NewID(t, ""), sessiontest.NewID(t, "")
	create := session.Delta{Create: &session.Create{Absolute: time.Hour}, Set: map[string][]byte{"k": []byte("v")}, Idle: time.Hour}
	for _, id := range []string{oldID, newID} {
		if _, err := s.Apply(ctx, id, create); !errors.Is(err, redisstore.ErrNotReplicated) {
			t.Fatalf("create: %v, want ErrNotReplicated", err)
		}
	}
	if err := s.Alias(ctx, oldID, newID, 1, time.Minute); !errors.Is(err, redisstore.ErrNotReplicated) {
		t.Fatalf("alias: %v, want ErrNotReplicated", err)
	}
	if err := s.Delete(ctx, oldID); !errors.Is(err, redisstore.ErrNotReplicated) {
		t.Fatalf("delete through the alias: %v, want ErrNotReplicated", err)
	}
	for _, id := range []string{oldID, newID} {
		if _, found, err := s.Load(ctx, id, time.Hour); err != nil || found {
			t.Fatalf("Load(%s) after deleting the alias: found=%v %v, want gone", id, found, err)
		}
	}
}

// TestStaleCASThroughAlias: a compare-and-set whose versions were read from
// a record that has since been renewed (copied to a new ID, whose versions
// start again at 1, and aliased) is refused with a conflict instead of being
// checked against the copy's versions, where a stale version could match
// and overwrite a later value.
func TestStaleCASThroughAlias(t *testing.T) {
	c := testenv.Redis(t)
	s := newStore(t, c)
	ctx := t.Context()
	oldID, newID := sessiontest.NewID(t, ""), sessiontest.NewID(t, "")
	if _, err := s.Apply(ctx, oldID, session.Delta{Create: &session.Create{Absolute: time.Hour}, Set: map[string][]byte{"k": []byte("read")}, Idle: time.Hour}); err != nil {
		t.Fatal(err)
	}
	// A reads k at version 1; then k is set again (version 2).
	if _, err := s.Apply(ctx, oldID, session.Delta{Set: map[string][]byte{"k": []byte("later")}, Idle: time.Hour}); err != nil {
		t.Fatal(err)
	}
	// A renewal copies the record (k at version 1 in the copy) and aliases.
	rec, _, err := s.Load(ctx, oldID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(ctx, newID, session.Delta{Create: &session.Create{Deadline: rec.AbsoluteDeadline, Created: rec.Created}, Set: map[string][]byte{"k": rec.Values["k"].Data}, Idle: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if err := s.Alias(ctx, oldID, newID, rec.Version, time.Minute); err != nil {
		t.Fatal(err)
	}
	// A's compare-and-set, with the version it read, through the old ID.
	_, err = s.Apply(ctx, oldID, session.Delta{Set: map[string][]byte{"k": []byte("stale")}, Expect: map[string]uint64{"k": 1}, Idle: time.Hour})
	if !errors.Is(err, session.ErrConflict) {
		t.Fatalf("stale compare-and-set through an alias: %v, want ErrConflict", err)
	}
	got, _, err := s.Load(ctx, oldID, time.Hour)
	if err != nil || got.ID != newID || string(got.Values["k"].Data) != "later" {
		t.Fatalf("after the stale compare-and-set: %s k=%q %v, want %s k=later", got.ID, got.Values["k"].Data, err, newID)
	}
	// Read again (through the alias), the compare-and-set goes through.
	if _, err := s.Apply(ctx, got.ID, session.Delta{Set: map[string][]byte{"k": []byte("next")}, Expect: map[string]uint64{"k": got.Values["k"].Version}, Idle: time.Hour}); err != nil {
		t.Fatal(err)
	}
	// A write without expectations still follows the alias.
	if _, err := s.Apply(ctx, oldID, session.Delta{Set: map[string][]byte{"b": []byte("1")}, Idle: time.Hour}); err != nil {
		t.Fatalf("plain write through the alias: %v", err)
	}
}
