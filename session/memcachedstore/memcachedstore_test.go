package memcachedstore_test

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"go.uber.org/goleak"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/memcachedstore"
	"github.com/activekit/activekit/session/sessiontest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const hour = time.Hour

// newClient returns a client of the test Memcached, closed when t ends.
func newClient(t *testing.T) *memcache.Client {
	t.Helper()
	c := memcache.New(testenv.MemcachedAddr(t))
	c.MaxIdleConns = 32
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// newStore returns a store on c under prefix. Memcached cannot list keys by
// prefix, so the keys are left to expire.
func newStore(t *testing.T, c *memcache.Client, prefix string, opts ...memcachedstore.Option) *memcachedstore.Store {
	t.Helper()
	s, err := memcachedstore.New(c, append([]memcachedstore.Option{memcachedstore.WithPrefix(prefix)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// prefix returns a key prefix unique to t.
func prefix(t *testing.T) string { return testenv.Name(t) + ":" }

func TestConformance(t *testing.T) {
	c := newClient(t)
	sessiontest.Run(t, func(t *testing.T) session.Store { return newStore(t, c, prefix(t)) })
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func create(t *testing.T, s session.Store, id string, d session.Delta) {
	t.Helper()
	if d.Create == nil {
		d.Create = &session.Create{Absolute: hour}
	}
	if d.Idle == 0 {
		d.Idle = hour
	}
	if v, err := s.Apply(t.Context(), id, d); err != nil || v != 1 {
		t.Fatalf("create %s: version %d, %v", id, v, err)
	}
}

func found(t *testing.T, s session.Store, id string) bool {
	t.Helper()
	_, ok, err := s.Load(t.Context(), id, 0)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return ok
}

// The deadlines are checked on the store's clock, to the millisecond, while
// the item is still in Memcached (whose expiration counts whole seconds and
// is set past the deadline).
func TestDeadlinesOnInjectedClock(t *testing.T) {
	c := newClient(t)
	clock := &fakeClock{now: time.Now()}
	p := prefix(t)
	s := newStore(t, c, p, memcachedstore.WithClock(clock.Now))
	ctx := t.Context()

	idleID, absID, refreshed := sessiontest.NewID(t, ""), sessiontest.NewID(t, ""), sessiontest.NewID(t, "")
	create(t, s, idleID, session.Delta{Idle: time.Minute, Set: map[string][]byte{"a": []byte("1")}})
	create(t, s, absID, session.Delta{Create: &session.Create{Absolute: 2 * time.Minute}})
	create(t, s, refreshed, session.Delta{Idle: time.Minute})

	clock.Advance(59 * time.Second)
	for _, id := range []string{idleID, absID} {
		if !found(t, s, id) {
			t.Fatalf("%s gone before its deadline", id)
		}
	}
	// A load with refresh moves the idle deadline of one of them.
	if _, ok, err := s.Load(ctx, refreshed, time.Minute); err != nil || !ok {
		t.Fatalf("Load with refresh: %v, %v", ok, err)
	}
	clock.Advance(time.Second + time.Millisecond) // 60.001s: past the idle deadline
	if found(t, s, idleID) {
		t.Fatal("record found 1ms after its idle deadline")
	}
	if !found(t, s, refreshed) {
		t.Fatal("refreshed record gone at its first idle deadline")
	}
	if _, err := s.Apply(ctx, idleID, session.Delta{Set: map[string][]byte{"a": []byte("2")}, Idle: hour}); !errors.Is(err, session.ErrNotFound) {
		t.Fatalf("Apply to an idle-expired record: %v, want ErrNotFound", err)
	}
	// The dead item is still in Memcached; creating over it works.
	if it, err := c.Get(p + "s:" + idleID); err != nil || it == nil {
		t.Fatalf("raw item of the expired record: %v (the test wants it still cached)", err)
	}
	create(t, s, idleID, session.Delta{})
	if rec, _, _ := s.Load(ctx, idleID, 0); len(rec.Values) != 0 || rec.Version != 1 {
		t.Fatalf("record created over an expired one: %+v", rec)
	}

	// Activity keeps absID alive to its absolute deadline, not past it.
	if _, err := s.Apply(ctx, absID, session.Delta{Set: map[string][]byte{"b": []byte("x")}, Idle: hour}); err != nil {
		t.Fatal(err)
	}
	rec, ok, err := s.Load(ctx, absID, hour)
	if err != nil || !ok {
		t.Fatalf("Load: %v, %v", ok, err)
	}
	if !rec.IdleDeadline.Equal(rec.AbsoluteDeadline) {
		t.Errorf("idle deadline %v, want capped at the absolute deadline %v", rec.IdleDeadline, rec.AbsoluteDeadline)
	}
	clock.Advance(time.Minute)
	if found(t, s, absID) {
		t.Fatal("record found after its absolute deadline")
	}
}

// Deadlines beyond 30 days are given to Memcached as Unix times: as a
// relative number of seconds Memcached would read them as a time in 1970
// and drop the item at once.
func TestLongTimeouts(t *testing.T) {
	c := newClient(t)
	p := prefix(t)
	s := newStore(t, c, p)
	id := sessiontest.NewID(t, "")
	create(t, s, id, session.Delta{Create: &session.Create{Absolute: 90 * 24 * hour}, Idle: 40 * 24 * hour, Set: map[string][]byte{"a": []byte("1")}})
	rec, ok, err := s.Load(t.Context(), id, 45*24*hour)
	if err != nil || !ok {
		t.Fatalf("Load of a session with a 40-day idle timeout: found=%v, %v", ok, err)
	}
	if d := time.Until(rec.IdleDeadline); d < 44*24*hour {
		t.Errorf("idle deadline in %v, want about 45 days", d)
	}
	// And the item itself is there, so Memcached did not expire it.
	if _, err := c.Get(p + "s:" + id); err != nil {
		t.Fatalf("raw item: %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	c := memcache.New("127.0.0.1:1")
	long := string(make([]byte, memcachedstore.MaxPrefixLen+1))
	for name, tc := range map[string]struct {
		c    *memcache.Client
		opts []memcachedstore.Option
	}{
		"nil client":        {nil, nil},
		"nil option":        {c, []memcachedstore.Option{nil}},
		"space in prefix":   {c, []memcachedstore.Option{memcachedstore.WithPrefix("a b:")}},
		"newline in prefix": {c, []memcachedstore.Option{memcachedstore.WithPrefix("a\n")}},
		"DEL in prefix":     {c, []memcachedstore.Option{memcachedstore.WithPrefix("a\x7f")}},
		"long prefix":       {c, []memcachedstore.Option{memcachedstore.WithPrefix(long)}},
		"non-ASCII prefix":  {c, []memcachedstore.Option{memcachedstore.WithPrefix("séance:")}},
		"negative attempts": {c, []memcachedstore.Option{memcachedstore.WithMaxAttempts(-1)}},
	} {
		if _, err := memcachedstore.New(tc.c, tc.opts...); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
	for name, opts := range map[string][]memcachedstore.Option{
		"defaults":     nil,
		"empty prefix": {memcachedstore.WithPrefix("")},
		"slash prefix": {memcachedstore.WithPrefix("shop/v2:")},
	} {
		if _, err := memcachedstore.New(c, opts...); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestUserTagRequired(t *testing.T) {
	s := newStore(t, newClient(t), prefix(t))
	id := sessiontest.NewID(t, "") // anonymous: no user tag
	_, err := s.Apply(t.Context(), id, session.Delta{Create: &session.Create{Absolute: hour}, User: "alice", Idle: hour})
	if !errors.Is(err, memcachedstore.ErrUserTag) {
		t.Fatalf("binding a user to an ID without its tag: %v, want ErrUserTag", err)
	}
	if found(t, s, id) {
		t.Fatal("record created despite the error")
	}
}

// An evicted user item must not bring back sessions that DestroyUser
// revoked: a bound session whose user item is gone counts as revoked.
func TestEvictedUserItemRevokes(t *testing.T) {
	c := newClient(t)
	p := prefix(t)
	s := newStore(t, c, p)
	user := "carol@example.com"
	id := sessiontest.NewID(t, user)
	create(t, s, id, session.Delta{User: user})
	if !found(t, s, id) {
		t.Fatal("bound session not found")
	}
	if err := c.Delete(p + "u:" + session.UserTag(user)); err != nil {
		t.Fatal(err)
	}
	if found(t, s, id) {
		t.Fatal("bound session found after its user item was evicted")
	}
	if _, err := s.Apply(t.Context(), id, session.Delta{Set: map[string][]byte{"a": []byte("1")}, Idle: hour}); !errors.Is(err, session.ErrNotFound) {
		t.Fatalf("Apply after eviction of the user item: %v, want ErrNotFound", err)
	}
}

func TestCorruptItem(t *testing.T) {
	c := newClient(t)
	p := prefix(t)
	s := newStore(t, c, p)
	id := sessiontest.NewID(t, "")
	if err := c.Set(&memcache.Item{Key: p + "s:" + id, Value: []byte("not a session"), Expiration: 60}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Load(t.Context(), id, 0); !errors.Is(err, memcachedstore.ErrCorrupt) {
		t.Errorf("Load of a foreign item: %v, want ErrCorrupt", err)
	}
	if _, err := s.Apply(t.Context(), id, session.Delta{Idle: hour}); !errors.Is(err, memcachedstore.ErrCorrupt) {
		t.Errorf("Apply to a foreign item: %v, want ErrCorrupt", err)
	}
	if err := s.Delete(t.Context(), id); err != nil {
		t.Errorf("Delete of a foreign item: %v", err)
	}
	if found(t, s, id) {
		t.Error("found after Delete")
	}
}

// Two instances (two stores, each with its own client and connections)
// write one session at once: 1,000 deltas of different keys and 1,000
// compare-and-set increments of one key. None is lost.
func TestNoLostUpdatesTwoInstances(t *testing.T) {
	n := 1000
	if testing.Short() {
		n = 100
	}
	p := prefix(t)
	stores := []*memcachedstore.Store{newStore(t, newClient(t), p), newStore(t, newClient(t), p)}
	ctx := t.Context()
	id := sessiontest.NewID(t, "")
	create(t, stores[0], id, session.Delta{Set: map[string][]byte{"n": []byte("0")}})

	const writers, incrementers = 8, 4
	var wg sync.WaitGroup
	var next, casConflicts, contended atomic.Int64
	errs := make(chan error, writers+incrementers)
	for w := range writers {
		s := stores[w%2]
		// Different keys.
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				k := "k" + strconv.Itoa(i)
				for {
					_, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{k: []byte(k)}, Idle: hour})
					if err == nil {
						break
					}
					// Twelve writers on one item can make a write lose
					// every one of its attempts on a loaded machine: it
					// wrote nothing and says so, which loses nothing; the
					// caller (here) tries again.
					if !errors.Is(err, memcachedstore.ErrContention) {
						errs <- fmt.Errorf("set %s: %w", k, err)
						return
					}
					contended.Add(1)
				}
			}
		})
	}
	var incs atomic.Int64
	for w := range incrementers {
		s := stores[(w+1)%2]
		// Compare-and-set increments of one key.
		wg.Go(func() {
			for incs.Add(1) <= int64(n) {
				for {
					rec, ok, err := s.Load(ctx, id, hour)
					if err != nil || !ok {
						errs <- fmt.Errorf("load: found=%v, %w", ok, err)
						return
					}
					cur := rec.Values["n"]
					v, err := strconv.Atoi(string(cur.Data))
					if err != nil {
						errs <- err
						return
					}
					_, err = s.Apply(ctx, id, session.Delta{
						Set:    map[string][]byte{"n": []byte(strconv.Itoa(v + 1))},
						Expect: map[string]uint64{"n": cur.Version},
						Idle:   hour,
					})
					if err == nil {
						break
					}
					if errors.Is(err, memcachedstore.ErrContention) {
						contended.Add(1)
						continue
					}
					if !errors.Is(err, session.ErrConflict) {
						errs <- fmt.Errorf("increment: %w", err)
						return
					}
					casConflicts.Add(1)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	rec, ok, err := stores[1].Load(ctx, id, 0)
	if err != nil || !ok {
		t.Fatalf("final Load: %v, %v", ok, err)
	}
	if got := len(rec.Values) - 1; got != n {
		t.Errorf("%d of %d keys written concurrently survive: %d lost", got, n, n-got)
	}
	if got := string(rec.Values["n"].Data); got != strconv.Itoa(n) {
		t.Errorf("counter = %s after %d compare-and-set increments", got, n)
	}
	if want := uint64(1 + 2*n); rec.Version != want {
		t.Errorf("version %d, want %d (one per acknowledged write)", rec.Version, want)
	}
	t.Logf("%d key writes and %d increments through two clients; %d increment conflicts and %d writes refused for contention retried by the caller", n, n, casConflicts.Load(), contended.Load())
}

// With one attempt per write, writers on two instances lose races: those
// writes fail with ErrContention and change nothing, every acknowledged one
// is kept.
func TestContention(t *testing.T) {
	p := prefix(t)
	stores := []*memcachedstore.Store{
		newStore(t, newClient(t), p, memcachedstore.WithMaxAttempts(1)),
		newStore(t, newClient(t), p, memcachedstore.WithMaxAttempts(1)),
	}
	id := sessiontest.NewID(t, "")
	create(t, stores[0], id, session.Delta{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	acked, refused := map[string]bool{}, 0
	for w := range 8 {
		s := stores[w%2]
		wg.Go(func() {
			for i := range 25 {
				k := fmt.Sprintf("w%d-%d", w, i)
				_, err := s.Apply(t.Context(), id, session.Delta{Set: map[string][]byte{k: nil}, Idle: hour})
				mu.Lock()
				switch {
				case err == nil:
					acked[k] = true
				case errors.Is(err, memcachedstore.ErrContention):
					var ce *memcachedstore.ContentionError
					if !errors.As(err, &ce) || ce.Attempts != 1 || ce.Op != "apply" {
						t.Errorf("contention error %v", err)
					}
					refused++
				default:
					t.Errorf("Apply %s: %v", k, err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if refused == 0 {
		t.Log("no write lost a race this time; the refusal path went untested")
	}
	rec, ok, err := stores[1].Load(t.Context(), id, 0)
	if err != nil || !ok {
		t.Fatalf("Load: %v, %v", ok, err)
	}
	for k := range acked {
		if _, ok := rec.Values[k]; !ok {
			t.Errorf("acknowledged key %s lost", k)
		}
	}
	if len(rec.Values) != len(acked) {
		t.Errorf("%d keys stored, %d acknowledged: a refused write was applied", len(rec.Values), len(acked))
	}
	if rec.Version != uint64(1+len(acked)) {
		t.Errorf("version %d, want %d", rec.Version, 1+len(acked))
	}
	t.Logf("%d writes acknowledged, %d refused for contention", len(acked), refused)
}

// Log out everywhere with two instances: a session bound on one is revoked
// by the other, and a rotation's alias follows to the new ID.
func TestDestroyUserAcrossInstances(t *testing.T) {
	p := prefix(t)
	a, b := newStore(t, newClient(t), p), newStore(t, newClient(t), p)
	ctx := t.Context()
	user := "dave@example.com"
	old, renewed := sessiontest.NewID(t, user), sessiontest.NewID(t, user)
	create(t, a, old, session.Delta{User: user, Set: map[string][]byte{"cart": []byte("3")}})
	rec, _, err := a.Load(ctx, old, 0)
	if err != nil {
		t.Fatal(err)
	}
	create(t, a, renewed, session.Delta{User: user, Create: &session.Create{Deadline: rec.AbsoluteDeadline, Created: rec.Created}, Set: map[string][]byte{"cart": []byte("3")}})
	if err := a.Alias(ctx, old, renewed, rec.Version, time.Minute); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := b.Load(ctx, old, hour); err != nil || !ok || got.ID != renewed {
		t.Fatalf("Load of the old ID on the other instance: %+v, %v, %v", got, ok, err)
	}
	ids, err := b.Sessions(ctx, user)
	if err != nil || len(ids) != 1 || ids[0] != renewed {
		t.Fatalf("Sessions = %v, %v; want [%s] (the alias is not a session)", ids, err, renewed)
	}
	if err := b.DestroyUser(ctx, user); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{old, renewed} {
		if found(t, a, id) {
			t.Errorf("%s found after DestroyUser on the other instance", id)
		}
	}
}
