package sessiontest_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/memstore"
	"github.com/activekit/activekit/session/sessiontest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// brokenEnv names, in the process TestSuiteCatchesBrokenStores starts, the
// broken store that TestBrokenStore runs the suite against.
const brokenEnv = "SESSIONTEST_BROKEN_STORE"

// A broken store wraps a correct one (memstore) and breaks one promise of
// session.Store; the embedded *memstore.Store gives it the optional
// interfaces.
type broken struct {
	// wrap returns the broken store over a fresh memstore.
	wrap func(*memstore.Store) session.Store
	// want lists subtests of Run that must fail on it (others may too).
	want []string
}

var brokenStores = map[string]broken{
	// Compare-and-set that does not compare: lost updates between
	// instances that read, then write.
	"IgnoresExpect": {
		wrap: func(m *memstore.Store) session.Store {
			return &applyHook{Store: m, apply: func(ctx context.Context, id string, d session.Delta) (uint64, error) {
				d.Expect = nil
				return m.Apply(ctx, id, d)
			}}
		},
		want: []string{"Versions", "ConflictChangesNothing", "ConcurrentCompareAndSet", "AliasRefusesExpectations"},
	},
	// Compare-and-set checked on a read, then written apart from it: two
	// writers that read the same version both succeed.
	"CheckThenWrite": {
		wrap: func(m *memstore.Store) session.Store {
			return &applyHook{Store: m, apply: func(ctx context.Context, id string, d session.Delta) (uint64, error) {
				if len(d.Expect) == 0 {
					return m.Apply(ctx, id, d)
				}
				rec, ok, err := m.Load(ctx, id, 0)
				if err != nil || !ok {
					return m.Apply(ctx, id, d)
				}
				for k, want := range d.Expect {
					if rec.Values[k].Version != want {
						return 0, &session.ConflictError{Key: k}
					}
				}
				runtime.Gosched()
				d.Expect = nil
				return m.Apply(ctx, id, d)
			}}
		},
		want: []string{"ConcurrentCompareAndSet"},
	},
	// A write to a missing record creates it: a logged-out (or revoked)
	// session comes back with the next request still in flight.
	"Resurrects": {
		wrap: func(m *memstore.Store) session.Store {
			return &applyHook{Store: m, apply: func(ctx context.Context, id string, d session.Delta) (uint64, error) {
				v, err := m.Apply(ctx, id, d)
				if errors.Is(err, session.ErrNotFound) && d.Create == nil {
					d.Create = &session.Create{Absolute: time.Hour}
					return m.Apply(ctx, id, d)
				}
				return v, err
			}}
		},
		want: []string{"ApplyMissingDoesNotResurrect", "ApplyAfterDeleteDoesNotResurrect", "IdleExpiry", "AliasGrace", "UserIndex"},
	},
	// No absolute deadline: activity keeps a session alive forever.
	"IgnoresAbsolute": {
		wrap: func(m *memstore.Store) session.Store {
			return &applyHook{Store: m, apply: func(ctx context.Context, id string, d session.Delta) (uint64, error) {
				if d.Create != nil && d.Create.Deadline.IsZero() {
					d.Create = &session.Create{Absolute: 1000 * d.Create.Absolute}
				}
				return m.Apply(ctx, id, d)
			}}
		},
		want: []string{"CreateAndLoad", "AbsoluteExpiry"},
	},
	// Load checks both deadlines, but a write checks only an idle deadline
	// that it never capped at the absolute one, and brings back a session
	// past its absolute deadline.
	"ApplyIgnoresAbsolute": {
		wrap: func(m *memstore.Store) session.Store { return newReviver(m) },
		want: []string{"AbsoluteExpiry"},
	},
	// Load hands out the map it caches (one shared by every caller).
	"SharesLoadedValues": {
		wrap: func(m *memstore.Store) session.Store {
			return &sharedLoads{Store: m, cache: map[string]session.Record{}}
		},
		want: []string{"NoSharedMemory"},
	},
	// Apply keeps the caller's byte slices.
	"KeepsCallerBytes": {
		wrap: func(m *memstore.Store) session.Store { return &keptBytes{Store: m, kept: map[string]map[string]kept{}} },
		want: []string{"NoSharedMemory"},
	},
	// A write that reads the whole record, then writes it whole: a
	// concurrent write in between is lost.
	"LostUpdates": {
		wrap: func(m *memstore.Store) session.Store { return &lostUpdates{Store: m} },
		want: []string{"ConcurrentKeys"},
	},
	// Load refreshes only by whole seconds, so a short idle timeout is
	// never refreshed by reads.
	"CoarseRefresh": {
		wrap: func(m *memstore.Store) session.Store { return &coarseRefresh{Store: m} },
		want: []string{"LoadKeepsShortIdleAlive"},
	},
	// The alias of a rotated token never ends.
	"EndlessAlias": {
		wrap: func(m *memstore.Store) session.Store { return &endlessAlias{Store: m} },
		want: []string{"AliasGrace"},
	},
	// Log out everywhere does nothing.
	"DestroyUserNoop": {
		wrap: func(m *memstore.Store) session.Store { return &destroyNoop{Store: m} },
		want: []string{"UserIndex"},
	},
	// The index lists every session ever bound that was not deleted, ended
	// ones included.
	"IndexListsEnded": {
		wrap: func(m *memstore.Store) session.Store { return newStaleIndex(m) },
		want: []string{"UserIndexExpiry"},
	},
}

// TestBrokenStore runs the suite against the broken store named by
// brokenEnv; TestSuiteCatchesBrokenStores starts it and expects it to fail.
func TestBrokenStore(t *testing.T) {
	name := os.Getenv(brokenEnv)
	if name == "" {
		t.Skip("run by TestSuiteCatchesBrokenStores")
	}
	b, ok := brokenStores[name]
	if !ok {
		t.Fatalf("no broken store %q", name)
	}
	sessiontest.Run(t, func(t *testing.T) session.Store {
		m, err := memstore.New()
		if err != nil {
			t.Fatal(err)
		}
		return b.wrap(m)
	})
}

// TestSuiteCatchesBrokenStores: the suite fails each broken store, in the
// subtests that check the promise it breaks. The suite runs in a child
// process (a failing suite fails its test), one per broken store.
func TestSuiteCatchesBrokenStores(t *testing.T) {
	if os.Getenv(brokenEnv) != "" {
		t.Skip("in a child process")
	}
	// Memstore itself passes the suite (session/memstore's TestConformance):
	// a failure below is the breakage.
	for name, b := range brokenStores {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestBrokenStore$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), brokenEnv+"="+name)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) {
				t.Fatalf("the suite passed a store that is broken (%v):\n%s", err, out)
			}
			for _, sub := range b.want {
				if !strings.Contains(string(out), "--- FAIL: TestBrokenStore/"+sub+" ") {
					t.Errorf("subtest %s passed a store that is broken", sub)
				}
			}
			if t.Failed() {
				t.Logf("output:\n%s", out)
			}
		})
	}
}

// applyHook replaces Apply.
type applyHook struct {
	*memstore.Store
	apply func(ctx context.Context, id string, d session.Delta) (uint64, error)
}

func (s *applyHook) Apply(ctx context.Context, id string, d session.Delta) (uint64, error) {
	return s.apply(ctx, id, d)
}

// reviver tracks each record's absolute deadline and an idle deadline it
// does not cap, and recreates a record that a write finds gone while that
// idle deadline has not passed.
type reviver struct {
	*memstore.Store
	mu       sync.Mutex
	idle     map[string]time.Time
	absolute map[string]time.Time
}

func newReviver(m *memstore.Store) *reviver {
	return &reviver{Store: m, idle: map[string]time.Time{}, absolute: map[string]time.Time{}}
}

func (s *reviver) Apply(ctx context.Context, id string, d session.Delta) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	v, err := s.Store.Apply(ctx, id, d)
	if errors.Is(err, session.ErrNotFound) && d.Create == nil && now.Before(s.idle[id]) && !now.Before(s.absolute[id]) {
		d.Create = &session.Create{Absolute: s.idle[id].Sub(now)}
		v, err = s.Store.Apply(ctx, id, d)
	}
	if err == nil {
		s.idle[id] = now.Add(d.Idle)
		if d.Create != nil {
			if rec, ok, _ := s.Store.Load(ctx, id, 0); ok {
				s.absolute[id] = rec.AbsoluteDeadline
			}
		}
	}
	return v, err
}

func (s *reviver) Delete(ctx context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.idle, id)
	return s.Store.Delete(ctx, id)
}

// sharedLoads returns the same Record (and map) to every Load of an
// unchanged record.
type sharedLoads struct {
	*memstore.Store
	mu    sync.Mutex
	cache map[string]session.Record
}

func (s *sharedLoads) Load(ctx context.Context, id string, idle time.Duration) (session.Record, bool, error) {
	rec, ok, err := s.Store.Load(ctx, id, idle)
	if !ok || err != nil {
		return rec, ok, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, hit := s.cache[rec.ID]; hit && c.Version == rec.Version {
		return c, true, nil
	}
	s.cache[rec.ID] = rec
	return rec, true, nil
}

// keptBytes returns, for a key last set by this store, the caller's slice.
type keptBytes struct {
	*memstore.Store
	mu   sync.Mutex
	kept map[string]map[string]kept
}

type kept struct {
	version uint64
	data    []byte
}

func (s *keptBytes) Apply(ctx context.Context, id string, d session.Delta) (uint64, error) {
	v, err := s.Store.Apply(ctx, id, d)
	if err == nil {
		s.mu.Lock()
		if s.kept[id] == nil {
			s.kept[id] = map[string]kept{}
		}
		for k, data := range d.Set {
			s.kept[id][k] = kept{v, data}
		}
		s.mu.Unlock()
	}
	return v, err
}

func (s *keptBytes) Load(ctx context.Context, id string, idle time.Duration) (session.Record, bool, error) {
	rec, ok, err := s.Store.Load(ctx, id, idle)
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, kv := range s.kept[rec.ID] {
		if v, ok := rec.Values[k]; ok && v.Version == kv.version {
			rec.Values[k] = session.Value{Data: kv.data, Version: v.Version}
		}
	}
	return rec, ok, err
}

// lostUpdates reads the record, then (after letting other goroutines run)
// writes it back whole with the delta merged: keys others added meanwhile
// are deleted.
type lostUpdates struct {
	*memstore.Store
	mu sync.Mutex // makes each whole write atomic, not the read before it
}

func (s *lostUpdates) Apply(ctx context.Context, id string, d session.Delta) (uint64, error) {
	if d.Create != nil {
		return s.Store.Apply(ctx, id, d)
	}
	read, ok, err := s.Store.Load(ctx, id, 0)
	if err != nil || !ok {
		return s.Store.Apply(ctx, id, d)
	}
	runtime.Gosched()
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok, err := s.Store.Load(ctx, id, 0)
	if err != nil || !ok {
		return s.Store.Apply(ctx, id, d)
	}
	whole := session.Delta{Set: map[string][]byte{}, Expect: d.Expect, Idle: d.Idle, User: d.User, MaxSize: d.MaxSize}
	for k, v := range read.Values {
		whole.Set[k] = v.Data
	}
	for k, v := range d.Set {
		whole.Set[k] = v
	}
	for _, k := range d.Delete {
		delete(whole.Set, k)
	}
	for k := range cur.Values {
		if _, ok := whole.Set[k]; !ok {
			whole.Delete = append(whole.Delete, k)
		}
	}
	return s.Store.Apply(ctx, id, whole)
}

// coarseRefresh does not refresh on Load with an idle timeout under a
// second.
type coarseRefresh struct{ *memstore.Store }

func (s *coarseRefresh) Load(ctx context.Context, id string, idle time.Duration) (session.Record, bool, error) {
	if idle < time.Second {
		idle = 0
	}
	return s.Store.Load(ctx, id, idle)
}

// endlessAlias gives every alias a grace period of a day.
type endlessAlias struct{ *memstore.Store }

func (s *endlessAlias) Alias(ctx context.Context, oldID, newID string, ifVersion uint64, _ time.Duration) error {
	return s.Store.Alias(ctx, oldID, newID, ifVersion, 24*time.Hour)
}

// destroyNoop's DestroyUser does nothing.
type destroyNoop struct{ *memstore.Store }

func (s *destroyNoop) DestroyUser(ctx context.Context, _ string) error { return ctx.Err() }

// staleIndex lists the sessions ever bound to a user and not deleted (or
// destroyed), without checking they are still alive.
type staleIndex struct {
	*memstore.Store
	mu    sync.Mutex
	bound map[string][]string
}

func newStaleIndex(m *memstore.Store) *staleIndex {
	return &staleIndex{Store: m, bound: map[string][]string{}}
}

func (s *staleIndex) Apply(ctx context.Context, id string, d session.Delta) (uint64, error) {
	v, err := s.Store.Apply(ctx, id, d)
	if err == nil && d.User != "" {
		s.mu.Lock()
		if !slices.Contains(s.bound[d.User], id) {
			s.bound[d.User] = append(s.bound[d.User], id)
		}
		s.mu.Unlock()
	}
	return v, err
}

func (s *staleIndex) Delete(ctx context.Context, id string) error {
	s.mu.Lock()
	for u, ids := range s.bound {
		s.bound[u] = slices.DeleteFunc(ids, func(x string) bool { return x == id })
	}
	s.mu.Unlock()
	return s.Store.Delete(ctx, id)
}

func (s *staleIndex) DestroyUser(ctx context.Context, user string) error {
	s.mu.Lock()
	delete(s.bound, user)
	s.mu.Unlock()
	return s.Store.DestroyUser(ctx, user)
}

func (s *staleIndex) Sessions(ctx context.Context, user string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.bound[user]), nil
}
