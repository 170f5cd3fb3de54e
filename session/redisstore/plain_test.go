package redisstore_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/redisstore"
	"github.com/activekit/activekit/session/sessiontest"
)

// The tests of this file check what Load does with plain commands (Redis 7
// and later): the checks the load script made, made in Go, and the expiry
// its PEXPIRE ... GT moves put back where it must not go.

// clients returns a standalone and a Cluster client.
func clients(t *testing.T) map[string]redis.UniversalClient {
	return map[string]redis.UniversalClient{"standalone": testenv.Redis(t), "cluster": testenv.RedisCluster(t)}
}

// keyedStore returns a store on c under a prefix unique to t (removed at the
// end), the prefix, and a function giving the Redis key of a session ID.
func keyedStore(t *testing.T, c redis.UniversalClient) (*redisstore.Store, string, func(id string) string) {
	t.Helper()
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, c, prefix)
	s, err := redisstore.New(c, redisstore.WithPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	return s, prefix, func(id string) string {
		tag, rest := session.HashTag(id), ""
		if len(tag) < len(id) {
			rest = id[len(tag):]
		}
		return prefix + "s:{" + tag + "}" + rest
	}
}

// redisMillis returns Redis's clock, in Unix ms.
func redisMillis(t *testing.T, c redis.UniversalClient) int64 {
	t.Helper()
	now, err := c.Time(t.Context()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return now.UnixMilli()
}

// waitRedisPast waits until Redis's clock has passed ms.
func waitRedisPast(t *testing.T, c redis.UniversalClient, ms int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for redisMillis(t, c) <= ms {
		if time.Now().After(deadline) {
			t.Fatalf("Redis's clock did not pass %d", ms)
		}
		time.Sleep(10 * time.Millisecond) // Redis's clock, not ours: it is polled
	}
}

// expiryWithin fails t unless key exists with an expiry at most limit (ms),
// and returns the expiry.
func expiryWithin(t *testing.T, c redis.UniversalClient, key string, limit int64) int64 {
	t.Helper()
	e, err := c.PExpireTime(t.Context(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	ms := int64(e / time.Millisecond)
	if e < 0 || ms > limit {
		t.Fatalf("expiry of %s: %v, want a deadline at most %d", key, e, limit)
	}
	return ms
}

func hgetInt(t *testing.T, c redis.UniversalClient, key, field string) int64 {
	t.Helper()
	v, err := c.HGet(t.Context(), key, field).Int64()
	if err != nil {
		t.Fatalf("HGET %s %s: %v", key, field, err)
	}
	return v
}

func mustCreate(t *testing.T, s *redisstore.Store, id string, absolute time.Duration) {
	t.Helper()
	if _, err := s.Apply(t.Context(), id, session.Delta{Create: &session.Create{Absolute: absolute}, Set: map[string][]byte{"k": []byte(id)}, Idle: time.Hour}); err != nil {
		t.Fatal(err)
	}
}

// TestAliasRefreshKeepsGrace: a Load with an idle refresh through an alias
// moves the alias key's expiry (PEXPIRE ... GT cannot tell it from a record)
// and puts it back to the grace deadline, so the alias still ends after its
// grace period however often it is read.
func TestAliasRefreshKeepsGrace(t *testing.T) {
	for name, c := range clients(t) {
		t.Run(name, func(t *testing.T) {
			s, _, sessionKey := keyedStore(t, c)
			ctx := t.Context()
			oldID, newID := sessiontest.NewID(t, ""), sessiontest.NewID(t, "")
			mustCreate(t, s, oldID, time.Hour)
			mustCreate(t, s, newID, time.Hour)
			const grace = time.Second
			start := time.Now()
			if err := s.Alias(ctx, oldID, newID, 1, grace); err != nil {
				t.Fatal(err)
			}
			key := sessionKey(oldID)
			g := hgetInt(t, c, key, "_g")
			loads := 0
			for {
				rec, found, err := s.Load(ctx, oldID, time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				if !found {
					break
				}
				loads++
				if rec.ID != newID {
					t.Fatalf("Load through the alias: ID %s, want %s", rec.ID, newID)
				}
				if e, err := c.PExpireTime(ctx, key).Result(); err == nil && e >= 0 && int64(e/time.Millisecond) > g {
					t.Fatalf("after a Load the alias expires at %d, past its grace deadline %d", e/time.Millisecond, g)
				}
				if time.Since(start) > 5*grace {
					t.Fatalf("alias with a grace of %v still resolves after %v (%d loads)", grace, time.Since(start), loads)
				}
			}
			// Redis keeps deadlines in whole milliseconds, truncated from
			// its clock: the grace may end up to 1 ms early by ours.
			if el := time.Since(start); el < grace-time.Millisecond {
				t.Fatalf("alias gone after %v, before its grace period %v", el, grace)
			}
			if now := redisMillis(t, c); now < g {
				t.Fatalf("alias gone at %d by Redis's clock, before its grace deadline %d", now, g)
			}
			if n, err := c.Exists(ctx, key).Result(); err != nil || n != 0 {
				t.Fatalf("alias key after its grace: EXISTS %d %v, want 0", n, err)
			}
			if _, found, err := s.Load(ctx, newID, time.Hour); err != nil || !found {
				t.Fatalf("target after the alias ended: found=%v %v", found, err)
			}
			t.Logf("%d loads through the alias within its grace", loads)
		})
	}
}

// TestAliasPastGraceIsGone: an alias key that outlived its grace deadline
// (a Load moved its expiry and died before putting it back) is gone for
// Load, Apply and Delete, which must not reach its target; also for the
// load script of servers before Redis 7.0.
func TestAliasPastGraceIsGone(t *testing.T) {
	all := clients(t)
	all["before 7.0"] = testenv.Redis(t)
	all["before 7.0"].AddHook(rewriteHook((&before7{}).rename))
	for name, c := range all {
		t.Run(name, func(t *testing.T) {
			s, _, sessionKey := keyedStore(t, c)
			for _, tc := range []struct {
				name string
				call func(ctx context.Context, oldID string) error
			}{
				{"load", func(ctx context.Context, oldID string) error {
					if _, found, err := s.Load(ctx, oldID, time.Hour); err != nil || found {
						return errors.Join(err, errors.New("found"))
					}
					return nil
				}},
				{"load without refresh", func(ctx context.Context, oldID string) error {
					if _, found, err := s.Load(ctx, oldID, 0); err != nil || found {
						return errors.Join(err, errors.New("found"))
					}
					return nil
				}},
				{"apply", func(ctx context.Context, oldID string) error {
					_, err := s.Apply(ctx, oldID, session.Delta{Set: map[string][]byte{"late": []byte("1")}, Idle: time.Hour})
					if !errors.Is(err, session.ErrNotFound) {
						return errors.Join(err, errors.New("want ErrNotFound"))
					}
					return nil
				}},
				{"delete", func(ctx context.Context, oldID string) error { return s.Delete(ctx, oldID) }},
			} {
				t.Run(tc.name, func(t *testing.T) {
					ctx := t.Context()
					oldID, newID := sessiontest.NewID(t, ""), sessiontest.NewID(t, "")
					mustCreate(t, s, oldID, time.Hour)
					mustCreate(t, s, newID, time.Hour)
					if err := s.Alias(ctx, oldID, newID, 1, 100*time.Millisecond); err != nil {
						t.Fatal(err)
					}
					key := sessionKey(oldID)
					if err := c.PExpire(ctx, key, time.Hour).Err(); err != nil {
						t.Fatal(err)
					}
					waitRedisPast(t, c, hgetInt(t, c, key, "_g"))
					if err := tc.call(ctx, oldID); err != nil {
						t.Fatalf("%s through an alias past its grace: %v", tc.name, err)
					}
					if n, err := c.Exists(ctx, key).Result(); err != nil || n != 0 {
						t.Errorf("alias key: EXISTS %d %v, want 0", n, err)
					}
					rec, found, err := s.Load(ctx, newID, time.Hour)
					if err != nil || !found || len(rec.Values) != 1 {
						t.Fatalf("target after %s through the ended alias: %v found=%v %v, want untouched", tc.name, rec.Values, found, err)
					}
				})
			}
		})
	}
}

// TestRefreshCappedAtAbsolute: in the last idle period the refresh moves the
// key's expiry past the absolute deadline; Load caps it again. A key left
// past its deadline (a Load that died before capping it) is not returned
// once the deadline has passed, and is deleted.
func TestRefreshCappedAtAbsolute(t *testing.T) {
	for name, c := range clients(t) {
		t.Run(name, func(t *testing.T) {
			s, _, sessionKey := keyedStore(t, c)
			ctx := t.Context()
			id := sessiontest.NewID(t, "")
			mustCreate(t, s, id, 500*time.Millisecond)
			key := sessionKey(id)
			abs := hgetInt(t, c, key, "_a")
			rec, found, err := s.Load(ctx, id, time.Hour)
			if err != nil || !found {
				t.Fatalf("Load: found=%v %v", found, err)
			}
			if rec.IdleDeadline.After(rec.AbsoluteDeadline) || rec.AbsoluteDeadline.UnixMilli() != abs {
				t.Fatalf("idle deadline %v, absolute %v (stored %d)", rec.IdleDeadline, rec.AbsoluteDeadline, abs)
			}
			expiryWithin(t, c, key, abs)

			if err := c.PExpire(ctx, key, time.Hour).Err(); err != nil {
				t.Fatal(err)
			}
			waitRedisPast(t, c, abs)
			for _, idle := range []time.Duration{0, time.Hour} {
				if _, found, err := s.Load(ctx, id, idle); err != nil || found {
					t.Fatalf("Load(idle=%v) past the absolute deadline of a key that outlived it: found=%v %v", idle, found, err)
				}
			}
			if n, err := c.Exists(ctx, key).Result(); err != nil || n != 0 {
				t.Fatalf("key past its absolute deadline: EXISTS %d %v, want 0", n, err)
			}
		})
	}
}

// TestConcurrentLoadsAtAbsolute: many Loads refreshing one record across its
// absolute deadline, each overshooting it and capping it again: none returns
// an idle deadline past the absolute one, none finds the record after it
// found it gone, and the key is gone at the end.
func TestConcurrentLoadsAtAbsolute(t *testing.T) {
	for name, c := range clients(t) {
		t.Run(name, func(t *testing.T) {
			s, _, sessionKey := keyedStore(t, c)
			ctx := t.Context()
			id := sessiontest.NewID(t, "")
			mustCreate(t, s, id, 500*time.Millisecond)
			var wg sync.WaitGroup
			var loads atomic.Int64
			errs := make(chan error, 8)
			for range 8 {
				wg.Go(func() {
					gone := false
					deadline := time.Now().Add(10 * time.Second)
					for time.Now().Before(deadline) {
						rec, found, err := s.Load(ctx, id, time.Hour)
						loads.Add(1)
						switch {
						case err != nil:
							errs <- err
							return
						case found && gone:
							errs <- errors.New("found again after it was gone")
							return
						case found && rec.IdleDeadline.After(rec.AbsoluteDeadline):
							errs <- errors.New("idle deadline past the absolute deadline")
							return
						case !found && gone:
							return
						case !found:
							gone = true
						}
					}
					errs <- errors.New("still found after 10 s")
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if n, err := c.Exists(ctx, sessionKey(id)).Result(); err != nil || n != 0 {
				t.Fatalf("key after its absolute deadline: EXISTS %d %v, want 0", n, err)
			}
			t.Logf("%d loads", loads.Load())
		})
	}
}

// TestLegacyAlias: an alias written before aliases kept their grace deadline
// (no _g; it lived its grace by its key's expiry alone) is followed; the
// first Load that moves its expiry gives it legacyGrace (10 s) from then on,
// stored as _g, so that refreshes cannot keep it alive for ever.
func TestLegacyAlias(t *testing.T) {
	for name, c := range clients(t) {
		t.Run(name, func(t *testing.T) {
			s, _, sessionKey := keyedStore(t, c)
			ctx := t.Context()
			oldID, newID := sessiontest.NewID(t, "alice"), sessiontest.NewID(t, "alice")
			mustCreate(t, s, newID, time.Hour)
			key := sessionKey(oldID)
			if err := c.HSet(ctx, key, "_to", newID).Err(); err != nil {
				t.Fatal(err)
			}
			if err := c.PExpire(ctx, key, 5*time.Second).Err(); err != nil {
				t.Fatal(err)
			}
			before := redisMillis(t, c)
			rec, found, err := s.Load(ctx, oldID, time.Hour)
			if err != nil || !found || rec.ID != newID {
				t.Fatalf("Load through an old alias: %s found=%v %v, want %s", rec.ID, found, err, newID)
			}
			after := redisMillis(t, c)
			g := hgetInt(t, c, key, "_g")
			legacy := session.DefaultRenewGrace.Milliseconds()
			if g < before+legacy || g > after+legacy {
				t.Fatalf("old alias given grace deadline %d, want within [%d, %d]", g, before+legacy, after+legacy)
			}
			expiryWithin(t, c, key, g)
			for range 3 {
				if rec, found, err := s.Load(ctx, oldID, time.Hour); err != nil || !found || rec.ID != newID {
					t.Fatalf("Load through the old alias again: %s found=%v %v", rec.ID, found, err)
				}
			}
			if g2 := hgetInt(t, c, key, "_g"); g2 != g {
				t.Fatalf("later loads moved the grace deadline from %d to %d", g, g2)
			}
			expiryWithin(t, c, key, g)
		})
	}
}

// TestRevokedMissedByIndex: a session whose user's epoch moved is not
// returned by Load, and is deleted, even when DestroyUser did not find it in
// the user's index (the revocation check, made by the load script before,
// now runs in Go on the epochs read in the same pipeline).
func TestRevokedMissedByIndex(t *testing.T) {
	for name, c := range clients(t) {
		t.Run(name, func(t *testing.T) {
			s, prefix, sessionKey := keyedStore(t, c)
			ctx := t.Context()
			id, other := sessiontest.NewID(t, "bob"), sessiontest.NewID(t, "bob")
			for _, i := range []string{id, other} {
				if _, err := s.Apply(ctx, i, session.Delta{Create: &session.Create{Absolute: time.Hour}, User: "bob", Idle: time.Hour}); err != nil {
					t.Fatal(err)
				}
			}
			index := prefix + "u:{" + session.UserTag("bob") + "}bob"
			if err := c.SRem(ctx, index, id).Err(); err != nil {
				t.Fatal(err)
			}
			if _, found, err := s.Load(ctx, id, time.Hour); err != nil || !found {
				t.Fatalf("Load before DestroyUser: found=%v %v", found, err)
			}
			if err := s.DestroyUser(ctx, "bob"); err != nil {
				t.Fatal(err)
			}
			key := sessionKey(id)
			if n, err := c.Exists(ctx, key).Result(); err != nil || n != 1 {
				t.Fatalf("the session missing from the index: EXISTS %d %v, want 1 (DestroyUser did not see it)", n, err)
			}
			for _, i := range []string{id, other} {
				if _, found, err := s.Load(ctx, i, time.Hour); err != nil || found {
					t.Fatalf("Load of a revoked session: found=%v %v", found, err)
				}
			}
			if n, err := c.Exists(ctx, key).Result(); err != nil || n != 0 {
				t.Fatalf("revoked session after Load: EXISTS %d %v, want 0", n, err)
			}
			// A session bound after the revocation is live.
			fresh := sessiontest.NewID(t, "bob")
			if _, err := s.Apply(ctx, fresh, session.Delta{Create: &session.Create{Absolute: time.Hour}, User: "bob", Idle: time.Hour}); err != nil {
				t.Fatal(err)
			}
			if rec, found, err := s.Load(ctx, fresh, time.Hour); err != nil || !found || rec.User != "bob" {
				t.Fatalf("session bound after DestroyUser: %q found=%v %v", rec.User, found, err)
			}
		})
	}
}

// before7 makes a client act as if its server predated Redis 7.0: it sends
// PEXPIRETIME, and PEXPIRE or PEXPIREAT with an option, under names the
// server does not know, so that it answers "ERR unknown command", as Redis 6
// does to PEXPIRETIME. It counts them.
type before7 struct{ renamed atomic.Int64 }

func (h *before7) rename(cmds ...redis.Cmder) {
	for _, cmd := range cmds {
		args := cmd.Args()
		name, _ := args[0].(string)
		name = strings.ToLower(name)
		if name == "pexpiretime" || (name == "pexpire" || name == "pexpireat") && len(args) > 3 {
			args[0] = name + "-before-7"
			h.renamed.Add(1)
		}
	}
}

// rewriteHook is a go-redis hook that passes every command sent, alone or
// in a pipeline, through its function before sending it.
type rewriteHook func(cmds ...redis.Cmder)

func (f rewriteHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (f rewriteHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { f(cmd); return next(ctx, cmd) }
}
func (f rewriteHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { f(cmds...); return next(ctx, cmds) }
}

// TestBefore7: on a server without PEXPIRETIME and PEXPIRE ... GT, Load
// finds out from the first error reply, once, and runs the load script from
// then on: the whole conformance suite passes that way, and a read is one
// round trip again after the first.
func TestBefore7(t *testing.T) {
	t.Run("conformance", func(t *testing.T) {
		sessiontest.Run(t, func(t *testing.T) session.Store {
			c := testenv.Redis(t)
			c.AddHook(rewriteHook((&before7{}).rename))
			return newStore(t, c)
		})
	})
	t.Run("detected once", func(t *testing.T) {
		c := testenv.Redis(t)
		h := &before7{}
		c.AddHook(rewriteHook(h.rename))
		s := newStore(t, c)
		ctx := t.Context()
		id := sessiontest.NewID(t, "")
		mustCreate(t, s, id, time.Hour)
		for range 2 { // the second loads the script into a fresh server
			if _, found, err := s.Load(ctx, id, time.Minute); err != nil || !found {
				t.Fatalf("first Load: found=%v %v", found, err)
			}
		}
		if h.renamed.Load() == 0 {
			t.Fatal("the first Load sent no Redis 7 command")
		}
		renamed := h.renamed.Load()
		cnt := &counter{}
		c.AddHook(cnt)
		for range 3 {
			if _, found, err := s.Load(ctx, id, time.Minute); err != nil || !found {
				t.Fatalf("Load: found=%v %v", found, err)
			}
		}
		if n := cnt.n.Load(); n != 3 {
			t.Errorf("3 loads after the fallback: %d round trips, want 3", n)
		}
		if n := h.renamed.Load() - renamed; n != 0 {
			t.Errorf("%d Redis 7 commands sent after the fallback", n)
		}
	})
}

// TestLoadPlainWithoutScripts: on Redis 7 a read runs no script; within
// the idle resolution of the Store's last refresh of the session it sends
// the hashes alone.
func TestLoadPlainWithoutScripts(t *testing.T) {
	c := testenv.Redis(t)
	for _, tc := range []struct {
		name  string
		opts  []redisstore.Option
		again string // the commands of a second Load right after the first
	}{
		{"default resolution", nil, "hgetall hgetall"},
		{"resolution 0", []redisstore.Option{redisstore.WithIdleResolution(0)}, "pexpire hgetall pexpiretime hgetall"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t, c, tc.opts...)
			ctx := t.Context()
			id := sessiontest.NewID(t, "alice")
			if _, err := s.Apply(ctx, id, session.Delta{Create: &session.Create{Absolute: 24 * time.Hour}, User: "alice", Idle: time.Hour}); err != nil {
				t.Fatal(err)
			}
			rec := newRecorder(c)
			load := func(idle time.Duration, want string) {
				t.Helper()
				rec.take()
				if _, found, err := s.Load(ctx, id, idle); err != nil || !found {
					t.Fatalf("Load: found=%v %v", found, err)
				}
				if got := rec.take(); got != want {
					t.Fatalf("a read of a user's session sent %q, want %q", got, want)
				}
			}
			load(time.Hour, "pexpire hgetall pexpiretime hgetall")
			load(time.Hour, tc.again)
			load(30*time.Minute, tc.again)                           // a shorter idle timeout is covered
			load(2*time.Hour, "pexpire hgetall pexpiretime hgetall") // a longer one is not
			load(0, "hgetall pexpiretime hgetall")
		})
	}
}

// TestIdleResolution: within the resolution a Load returns the deadline of
// the Store's last refresh and leaves the expiry alone; after it, or near
// the absolute deadline, every Load moves it; a session destroyed or renewed
// meanwhile is seen at once.
func TestIdleResolution(t *testing.T) {
	c := testenv.Redis(t)
	ctx := t.Context()
	s, _, sessionKey := keyedStore(t, c)
	const idle = 2 * time.Second // resolution: a tenth, 200ms
	id := sessiontest.NewID(t, "")
	mustCreate(t, s, id, 24*time.Hour)
	first, found, err := s.Load(ctx, id, idle)
	if err != nil || !found {
		t.Fatalf("Load: found=%v %v", found, err)
	}
	// Apply moved the expiry an hour on; PEXPIRE ... GT leaves it. Move it
	// to now+idle by hand so that a refresh would show.
	if err := c.PExpire(ctx, sessionKey(id), idle).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	pttl := func() time.Duration {
		d, err := c.PTTL(ctx, sessionKey(id)).Result()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	before := pttl()
	again, found, err := s.Load(ctx, id, idle)
	if err != nil || !found {
		t.Fatalf("Load: found=%v %v", found, err)
	}
	if !again.IdleDeadline.Equal(first.IdleDeadline) {
		t.Errorf("Load within the resolution: idle deadline %v, want the last refresh's %v", again.IdleDeadline, first.IdleDeadline)
	}
	if after := pttl(); after > before {
		t.Errorf("Load within the resolution moved the expiry: PTTL %v, then %v", before, after)
	}
	time.Sleep(250 * time.Millisecond)
	if _, _, err := s.Load(ctx, id, idle); err != nil {
		t.Fatal(err)
	}
	if d := pttl(); d < idle-100*time.Millisecond {
		t.Errorf("Load after the resolution: PTTL %v, want about %v", d, idle)
	}

	// Renewed within the resolution: the old ID is an alias, followed.
	if _, _, err := s.Load(ctx, id, idle); err != nil {
		t.Fatal(err)
	}
	to := sessiontest.NewID(t, "")
	mustCreate(t, s, to, 24*time.Hour)
	if err := s.Alias(ctx, id, to, 1, time.Minute); err != nil {
		t.Fatal(err)
	}
	rec, found, err := s.Load(ctx, id, idle)
	if err != nil || !found || rec.ID != to {
		t.Fatalf("Load of a renewed ID: %q found=%v %v, want %q", rec.ID, found, err, to)
	}
	g := hgetInt(t, c, sessionKey(id), "_g")
	expiryWithin(t, c, sessionKey(id), g)

	// Destroyed within the resolution.
	if _, _, err := s.Load(ctx, to, idle); err != nil {
		t.Fatal(err)
	}
	if err := c.Del(ctx, sessionKey(to)).Err(); err != nil { // as another instance's Delete
		t.Fatal(err)
	}
	if _, found, err := s.Load(ctx, to, idle); err != nil || found {
		t.Fatalf("Load of a deleted session: found=%v %v", found, err)
	}

	// Near the absolute deadline every Load refreshes (and caps).
	near := sessiontest.NewID(t, "")
	mustCreate(t, s, near, 30*time.Second)
	r := newRecorder(c)
	for range 2 {
		r.take()
		if _, found, err := s.Load(ctx, near, idle); err != nil || !found {
			t.Fatalf("Load: found=%v %v", found, err)
		}
		if got := r.take(); got != "pexpire hgetall pexpiretime" {
			t.Errorf("a read near the absolute deadline sent %q", got)
		}
	}
}

// TestIdleResolutionInvalid: a negative resolution is refused.
func TestIdleResolutionInvalid(t *testing.T) {
	if _, err := redisstore.New(testenv.Redis(t), redisstore.WithIdleResolution(-time.Second)); err == nil {
		t.Fatal("New(WithIdleResolution(-1s)): no error")
	}
}

// cmdRecorder collects the names of the commands a client sends.
type cmdRecorder struct {
	mu    sync.Mutex
	names []string
}

func newRecorder(c redis.UniversalClient) *cmdRecorder {
	r := &cmdRecorder{}
	c.AddHook(&recorder{record: func(cmds ...redis.Cmder) {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, cmd := range cmds {
			if n := cmd.Name(); n != "hello" && n != "client" { // a new connection's handshake
				r.names = append(r.names, n)
			}
		}
	}})
	return r
}

// take returns the commands sent since the last take.
func (r *cmdRecorder) take() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := strings.Join(r.names, " ")
	r.names = nil
	return s
}

// recorder calls record with the commands the client sends.
type recorder struct{ record func(...redis.Cmder) }

func (r *recorder) DialHook(next redis.DialHook) redis.DialHook { return next }
func (r *recorder) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { r.record(cmd); return next(ctx, cmd) }
}
func (r *recorder) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { r.record(cmds...); return next(ctx, cmds) }
}

// TestAliasChain: a session renewed twice within one grace period leaves a
// chain of two aliases; a Load through the first reaches the record and puts
// back the expiry of both aliases it moved, in three round trips.
func TestAliasChain(t *testing.T) {
	for name, c := range clients(t) {
		t.Run(name, func(t *testing.T) {
			s, _, sessionKey := keyedStore(t, c)
			ctx := t.Context()
			a, b, d := sessiontest.NewID(t, ""), sessiontest.NewID(t, ""), sessiontest.NewID(t, "")
			for _, id := range []string{a, b, d} {
				mustCreate(t, s, id, 24*time.Hour)
			}
			if err := s.Alias(ctx, a, b, 1, time.Minute); err != nil {
				t.Fatal(err)
			}
			if err := s.Alias(ctx, b, d, 1, time.Minute); err != nil {
				t.Fatal(err)
			}
			// Once first, so that the connections are dialled (their
			// handshakes would count).
			if _, _, err := s.Load(ctx, a, time.Hour); err != nil {
				t.Fatal(err)
			}
			cnt := &counter{}
			c.AddHook(cnt)
			rec, found, err := s.Load(ctx, a, time.Hour)
			if err != nil || !found || rec.ID != d {
				t.Fatalf("Load through two aliases: %s found=%v %v, want %s", rec.ID, found, err, d)
			}
			if n := cnt.n.Load(); n != 3 {
				t.Errorf("Load through two aliases: %d round trips, want 3", n)
			}
			for _, id := range []string{a, b} {
				key := sessionKey(id)
				expiryWithin(t, c, key, hgetInt(t, c, key, "_g"))
			}
		})
	}
}

// TestIdleResolutionApply: an Apply within the resolution of the Store's
// last move of the idle deadline leaves the expiry alone, unless the
// absolute deadline is near; after the resolution it moves it again.
func TestIdleResolutionApply(t *testing.T) {
	c := testenv.Redis(t)
	ctx := t.Context()
	s, _, sessionKey := keyedStore(t, c)
	const idle = 2 * time.Second // resolution: a tenth, 200ms
	pttl := func(key string) time.Duration {
		t.Helper()
		d, err := c.PTTL(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	put := func(id string) {
		t.Helper()
		if _, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"a": []byte("1")}, Idle: idle}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name     string
		absolute time.Duration
		skips    bool
	}{
		{"far from the absolute deadline", 24 * time.Hour, true},
		{"near the absolute deadline", 30 * time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := sessiontest.NewID(t, "")
			if _, err := s.Apply(ctx, id, session.Delta{Create: &session.Create{Absolute: tc.absolute}, Idle: time.Millisecond * 100}); err != nil {
				t.Fatal(err)
			}
			key := sessionKey(id)
			put(id) // moves the expiry to now+idle, and starts the resolution
			if d := pttl(key); d < idle-100*time.Millisecond {
				t.Fatalf("first Apply: PTTL %v, want about %v", d, idle)
			}
			if err := c.PExpire(ctx, key, time.Second).Err(); err != nil { // so that a move would show
				t.Fatal(err)
			}
			put(id)
			moved := pttl(key) > time.Second
			if moved == tc.skips {
				t.Fatalf("second Apply within the resolution: moved the expiry %v, want %v", moved, !tc.skips)
			}
			time.Sleep(250 * time.Millisecond)
			put(id)
			if d := pttl(key); d < idle-100*time.Millisecond {
				t.Errorf("Apply after the resolution: PTTL %v, want about %v", d, idle)
			}
		})
	}
}
