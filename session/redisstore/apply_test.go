package redisstore_test

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/redisstore"
	"github.com/activekit/activekit/session/sessiontest"
)

// The tests of this file check the fast apply script (Redis 7 and later):
// the cases it leaves to the general one, and the absolute deadline it
// keeps without reading Redis's clock.

// TestApplyFastFallbacks: a delta the fast script leaves to the general one
// (through an alias, binding a user, a record without _s) is applied all the
// same, in one more round trip.
func TestApplyFastFallbacks(t *testing.T) {
	for name, c := range clients(t) {
		t.Run(name, func(t *testing.T) {
			s, _, sessionKey := keyedStore(t, c)
			ctx := t.Context()
			put := func(id, k, v string, d session.Delta) {
				t.Helper()
				d.Set, d.Idle = map[string][]byte{k: []byte(v)}, time.Hour
				if _, err := s.Apply(ctx, id, d); err != nil {
					t.Fatalf("Apply %s=%s: %v", k, v, err)
				}
			}
			get := func(id, k string) string {
				t.Helper()
				rec, found, err := s.Load(ctx, id, time.Hour)
				if err != nil || !found {
					t.Fatalf("Load: found=%v %v", found, err)
				}
				return string(rec.Values[k].Data)
			}

			// Through an alias: the write lands on the target.
			oldID, newID := sessiontest.NewID(t, "carol"), sessiontest.NewID(t, "carol")
			mustCreate(t, s, oldID, time.Hour)
			mustCreate(t, s, newID, time.Hour)
			if err := s.Alias(ctx, oldID, newID, 1, time.Minute); err != nil {
				t.Fatal(err)
			}
			put(oldID, "via", "alias", session.Delta{})
			if got := get(newID, "via"); got != "alias" {
				t.Errorf("write through an alias: target has %q", got)
			}

			// Binding a user to a live record: it is indexed.
			id := sessiontest.NewID(t, "carol")
			mustCreate(t, s, id, time.Hour)
			put(id, "a", "1", session.Delta{User: "carol"})
			ids, err := s.Sessions(ctx, "carol")
			if err != nil || !contains(ids, id) {
				t.Fatalf("Sessions after binding by a write: %v %v, want %s among them", ids, err, id)
			}
			// The same user again: the general script, which keeps the
			// binding as it is.
			put(id, "a", "2", session.Delta{User: "carol"})
			if got := get(id, "a"); got != "2" {
				t.Errorf("a = %q, want 2", got)
			}

			// A record without _s is measured (by the general script),
			// then written by the fast one with the size kept.
			if err := c.HDel(ctx, sessionKey(id), "_s").Err(); err != nil {
				t.Fatal(err)
			}
			put(id, "b", "xyz", session.Delta{})
			put(id, "b", "xy", session.Delta{})
			// k(len 1)+id, a+2, b+xy.
			want := int64(1 + len(id) + 2 + 3)
			if got := hgetInt(t, c, sessionKey(id), "_s"); got != want {
				t.Errorf("_s = %d, want %d", got, want)
			}
			var se *session.SizeError
			_, err = s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"c": []byte("x")}, Idle: time.Hour, MaxSize: int(want) + 1})
			if !errors.As(err, &se) || se.Size != int(want)+2 {
				t.Fatalf("limited write: %v, want a SizeError of %d bytes", err, want+2)
			}

			// A missing session: not found.
			if _, err := s.Apply(ctx, sessiontest.NewID(t, ""), session.Delta{Set: map[string][]byte{"x": nil}, Idle: time.Hour}); !errors.Is(err, session.ErrNotFound) {
				t.Fatalf("write to a missing session: %v, want ErrNotFound", err)
			}
		})
	}
}

// TestApplyRefusalOrder: a delta both stale and too large is refused as a
// conflict (as the general script does), and leaves the record as it was.
func TestApplyRefusalOrder(t *testing.T) {
	for name, c := range clients(t) {
		t.Run(name, func(t *testing.T) {
			s, _, sessionKey := keyedStore(t, c)
			ctx := t.Context()
			id := sessiontest.NewID(t, "")
			mustCreate(t, s, id, time.Hour)
			before, err := c.PExpireTime(ctx, sessionKey(id)).Result()
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"k": []byte("long value")}, Expect: map[string]uint64{"k": 9}, Idle: 2 * time.Hour, MaxSize: 1})
			var ce *session.ConflictError
			if !errors.As(err, &ce) || ce.Key != "k" {
				t.Fatalf("stale and too large: %v, want a conflict on k", err)
			}
			if v := hgetInt(t, c, sessionKey(id), "_v"); v != 1 {
				t.Errorf("_v = %d after a refusal, want 1", v)
			}
			if after, err := c.PExpireTime(ctx, sessionKey(id)).Result(); err != nil || after != before {
				t.Errorf("expiry moved by a refused write: %v -> %v %v", before, after, err)
			}
		})
	}
}

func contains(ids []string, id string) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// TestApplyCappedAtAbsolute: a write caps the idle deadline at the absolute
// deadline even if a Load that did not live to cap its refresh left the key
// past it; after the absolute deadline such a key is refused (not found, a
// conflict or size refusal included) and deleted, never written.
func TestApplyCappedAtAbsolute(t *testing.T) {
	for name, c := range clients(t) {
		t.Run(name, func(t *testing.T) {
			s, _, sessionKey := keyedStore(t, c)
			ctx := t.Context()
			for _, d := range []session.Delta{
				{Set: map[string][]byte{"a": []byte("1")}},
				{Set: map[string][]byte{"a": []byte("1")}, Expect: map[string]uint64{"a": 7}},
				{Set: map[string][]byte{"a": []byte("1")}, MaxSize: 1},
				{Delete: []string{"k"}},
			} {
				id := sessiontest.NewID(t, "")
				mustCreate(t, s, id, 700*time.Millisecond)
				key := sessionKey(id)
				abs := hgetInt(t, c, key, "_a")
				if err := c.PExpire(ctx, key, time.Hour).Err(); err != nil {
					t.Fatal(err)
				}
				if _, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"b": []byte("2")}, Idle: time.Hour}); err != nil {
					t.Fatal(err)
				}
				if e := expiryWithin(t, c, key, abs); e != abs {
					t.Errorf("expiry %d after a write in the last idle period, want the absolute deadline %d", e, abs)
				}
				if err := c.PExpire(ctx, key, time.Hour).Err(); err != nil {
					t.Fatal(err)
				}
				waitRedisPast(t, c, abs)
				d.Idle = time.Hour
				if _, err := s.Apply(ctx, id, d); !errors.Is(err, session.ErrNotFound) {
					t.Errorf("%+v past the absolute deadline: %v, want ErrNotFound", d, err)
				}
				if n, err := c.Exists(ctx, key).Result(); err != nil || n != 0 {
					t.Errorf("key past its absolute deadline after a write: EXISTS %d %v, want 0", n, err)
				}
			}
		})
	}
}

// oldApply makes a client's server answer the fast apply script as a server
// before Redis 7.0 does ({'old'}): it runs a script that says so instead,
// and counts the fast scripts it was sent.
type oldApply struct{ sent atomic.Int64 }

func (h *oldApply) swap(cmds ...redis.Cmder) {
	for _, cmd := range cmds {
		args := cmd.Args()
		name, _ := args[0].(string)
		body, _ := args[1].(string)
		switch strings.ToLower(name) {
		case "evalsha":
			if body != redisstore.ApplyFastHash {
				continue
			}
		case "eval":
			if !strings.Contains(body, "REDIS_VERSION_NUM") {
				continue
			}
		default:
			continue
		}
		args[0], args[1] = "eval", "return {'old'}"
		h.sent.Add(1)
	}
}

// TestApplyBefore7: on a server before Redis 7.0 the fast apply script
// answers so; Apply runs the general script then, and from then on only it:
// the conformance suite passes that way.
func TestApplyBefore7(t *testing.T) {
	t.Run("conformance", func(t *testing.T) {
		sessiontest.Run(t, func(t *testing.T) session.Store {
			c := testenv.Redis(t)
			c.AddHook(rewriteHook((&before7{}).rename))
			c.AddHook(rewriteHook((&oldApply{}).swap))
			return newStore(t, c)
		})
	})
	t.Run("detected once", func(t *testing.T) {
		c := testenv.Redis(t)
		h := &oldApply{}
		c.AddHook(rewriteHook(h.swap))
		s := newStore(t, c)
		id := sessiontest.NewID(t, "")
		mustCreate(t, s, id, time.Hour)
		for i := range 3 {
			v, err := s.Apply(t.Context(), id, session.Delta{Set: map[string][]byte{"a": []byte("1")}, Idle: time.Hour})
			if err != nil || v != uint64(i+2) {
				t.Fatalf("write %d: version %d %v, want %d", i, v, err, i+2)
			}
		}
		if n := h.sent.Load(); n != 1 {
			t.Errorf("fast apply scripts sent: %d, want 1 (none after the server answered it predates 7.0)", n)
		}
	})
}
