package sessiontest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/session"
)

// Run runs the conformance suite against the stores newStore returns. Each
// subtest calls newStore once, with its own *testing.T, so a store backed by
// a shared server should use a key prefix unique to that test (such as
// testenv.Name(t)) and remove its keys in t.Cleanup. The optional
// interfaces (session.Aliaser, session.UserIndex, session.SizeLimiter) are
// tested when the store implements them.
//
// Expiry is tested in real time with timeouts of a few hundred milliseconds,
// polling the store, so a store must keep time to about 50ms.
func Run(t *testing.T, newStore func(t *testing.T) session.Store) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s session.Store)
	}{
		{"LoadMissing", testLoadMissing},
		{"CreateAndLoad", testCreateAndLoad},
		{"CreateExisting", testCreateExisting},
		{"ApplyMissingDoesNotResurrect", testApplyMissing},
		{"ApplyAfterDeleteDoesNotResurrect", testApplyAfterDelete},
		{"SetAndDelete", testSetAndDelete},
		{"BinaryValues", testBinaryValues},
		{"NoSharedMemory", testNoSharedMemory},
		{"Versions", testVersions},
		{"ConflictChangesNothing", testConflictChangesNothing},
		{"InvalidDelta", testInvalidDelta},
		{"DeleteMissing", testDeleteMissing},
		{"CancelledContext", testCancelledContext},
		{"ConcurrentKeys", testConcurrentKeys},
		{"ConcurrentCompareAndSet", testConcurrentCAS},
		{"IdleExpiry", testIdleExpiry},
		{"AbsoluteExpiry", testAbsoluteExpiry},
		{"LoadRefreshesIdle", testLoadRefreshesIdle},
		{"LoadKeepsShortIdleAlive", testLoadKeepsShortIdleAlive},
		{"ApplyIdleNeverBackwards", testApplyIdleNeverBackwards},
		{"Alias", testAlias},
		{"AliasGrace", testAliasGrace},
		{"AliasRefusesExpectations", testAliasExpect},
		{"UserIndex", testUserIndex},
		{"UserIndexExpiry", testUserIndexExpiry},
		{"MaxSize", testMaxSize},
		{"ConcurrentMaxSize", testConcurrentMaxSize},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			if s == nil {
				t.Fatal("sessiontest: newStore returned nil")
			}
			tc.fn(t, s)
		})
	}
}

const (
	hour     = time.Hour
	pollStep = 20 * time.Millisecond
	pollMax  = 10 * time.Second
)

// NewID returns a fresh store ID, bound to user's tag when user is not empty.
func NewID(t testing.TB, user string) string {
	t.Helper()
	tok, err := session.NewToken(user)
	if err != nil {
		t.Fatalf("NewToken: %v", err)
	}
	id, ok := session.TokenID(tok)
	if !ok {
		t.Fatalf("TokenID(%q) rejected a token NewToken made", tok)
	}
	return id
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func create(t *testing.T, s session.Store, id string, set map[string][]byte) uint64 {
	t.Helper()
	v, err := s.Apply(ctxT(t), id, session.Delta{Create: &session.Create{Absolute: hour}, Set: set, Idle: hour})
	if err != nil {
		t.Fatalf("create %s: %v", id, err)
	}
	if v != 1 {
		t.Fatalf("create %s: version %d, want 1", id, v)
	}
	return v
}

func load(t *testing.T, s session.Store, id string) (session.Record, bool) {
	t.Helper()
	rec, found, err := s.Load(ctxT(t), id, 0)
	if err != nil {
		t.Fatalf("Load %s: %v", id, err)
	}
	return rec, found
}

func mustLoad(t *testing.T, s session.Store, id string) session.Record {
	t.Helper()
	rec, found := load(t, s, id)
	if !found {
		t.Fatalf("Load %s: not found, want found", id)
	}
	return rec
}

func wantMissing(t *testing.T, s session.Store, id string) {
	t.Helper()
	if _, found := load(t, s, id); found {
		t.Fatalf("Load %s: found, want not found", id)
	}
}

func wantValues(t *testing.T, rec session.Record, want map[string]string) {
	t.Helper()
	if len(rec.Values) != len(want) {
		t.Errorf("record has %d keys %v, want %d %v", len(rec.Values), keys(rec.Values), len(want), want)
	}
	for k, w := range want {
		v, ok := rec.Values[k]
		if !ok {
			t.Errorf("key %q missing", k)
			continue
		}
		if string(v.Data) != w {
			t.Errorf("key %q = %q, want %q", k, v.Data, w)
		}
		if v.Version == 0 || v.Version > rec.Version {
			t.Errorf("key %q has version %d, record version %d", k, v.Version, rec.Version)
		}
	}
}

func keys(m map[string]session.Value) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// poll calls cond until it returns true, failing after pollMax.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(pollMax)
	tick := time.NewTicker(pollStep)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v", what, pollMax)
		}
		<-tick.C
	}
}

func testLoadMissing(t *testing.T, s session.Store) {
	rec, found, err := s.Load(ctxT(t), NewID(t, ""), hour)
	if err != nil || found {
		t.Fatalf("Load of a missing ID = (%+v, %v, %v), want found=false and no error", rec, found, err)
	}
}

func testCreateAndLoad(t *testing.T, s session.Store) {
	id := NewID(t, "")
	create(t, s, id, map[string][]byte{"a": []byte("1"), "b": []byte("two")})
	rec := mustLoad(t, s, id)
	if rec.ID != id {
		t.Errorf("record ID %q, want %q", rec.ID, id)
	}
	if rec.Version != 1 {
		t.Errorf("version %d, want 1", rec.Version)
	}
	wantValues(t, rec, map[string]string{"a": "1", "b": "two"})
	if rec.Values["a"].Version != 1 {
		t.Errorf("key version %d, want 1", rec.Values["a"].Version)
	}
	if rec.User != "" {
		t.Errorf("user %q, want none", rec.User)
	}
	if rec.Created.IsZero() || rec.IdleDeadline.IsZero() || rec.AbsoluteDeadline.IsZero() {
		t.Fatalf("record times not set: %+v", rec)
	}
	if d := rec.AbsoluteDeadline.Sub(rec.Created); d < hour-time.Second || d > hour+time.Second {
		t.Errorf("absolute deadline %v after creation, want 1h", d)
	}
	if rec.IdleDeadline.After(rec.AbsoluteDeadline) {
		t.Errorf("idle deadline %v after absolute deadline %v", rec.IdleDeadline, rec.AbsoluteDeadline)
	}
	// An empty session is a session.
	id2 := NewID(t, "")
	create(t, s, id2, nil)
	if rec := mustLoad(t, s, id2); len(rec.Values) != 0 {
		t.Errorf("empty session has values %v", keys(rec.Values))
	}
}

func testCreateExisting(t *testing.T, s session.Store) {
	id := NewID(t, "")
	create(t, s, id, map[string][]byte{"a": []byte("1")})
	_, err := s.Apply(ctxT(t), id, session.Delta{Create: &session.Create{Absolute: hour}, Set: map[string][]byte{"a": []byte("2")}, Idle: hour})
	if !errors.Is(err, session.ErrConflict) {
		t.Fatalf("create over an existing record: %v, want ErrConflict", err)
	}
	wantValues(t, mustLoad(t, s, id), map[string]string{"a": "1"})
}

func testApplyMissing(t *testing.T, s session.Store) {
	id := NewID(t, "")
	_, err := s.Apply(ctxT(t), id, session.Delta{Set: map[string][]byte{"a": []byte("1")}, Idle: hour})
	if !errors.Is(err, session.ErrNotFound) {
		t.Fatalf("Apply to a missing record: %v, want ErrNotFound", err)
	}
	wantMissing(t, s, id)
}

func testApplyAfterDelete(t *testing.T, s session.Store) {
	id := NewID(t, "")
	create(t, s, id, map[string][]byte{"a": []byte("1")})
	if err := s.Delete(ctxT(t), id); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantMissing(t, s, id)
	_, err := s.Apply(ctxT(t), id, session.Delta{Set: map[string][]byte{"b": []byte("2")}, Delete: []string{"a"}, Idle: hour})
	if !errors.Is(err, session.ErrNotFound) {
		t.Fatalf("Apply after Delete: %v, want ErrNotFound", err)
	}
	wantMissing(t, s, id)
}

func testSetAndDelete(t *testing.T, s session.Store) {
	ctx := ctxT(t)
	id := NewID(t, "")
	create(t, s, id, map[string][]byte{"a": []byte("1"), "b": []byte("2"), "c": []byte("3")})
	v, err := s.Apply(ctx, id, session.Delta{
		Set:    map[string][]byte{"a": []byte("10"), "d": []byte("4")},
		Delete: []string{"b", "never-set"},
		Idle:   hour,
	})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if v != 2 {
		t.Errorf("version %d, want 2", v)
	}
	rec := mustLoad(t, s, id)
	wantValues(t, rec, map[string]string{"a": "10", "c": "3", "d": "4"})
	if rec.Version != 2 || rec.Values["a"].Version != 2 || rec.Values["d"].Version != 2 || rec.Values["c"].Version != 1 {
		t.Errorf("versions: record %d, a %d, c %d, d %d; want 2, 2, 1, 2",
			rec.Version, rec.Values["a"].Version, rec.Values["c"].Version, rec.Values["d"].Version)
	}
	// A delta that only refreshes the idle deadline still counts.
	if v, err := s.Apply(ctx, id, session.Delta{Idle: hour}); err != nil || v != 3 {
		t.Errorf("empty delta: version %d, %v; want 3, nil", v, err)
	}
}

func testBinaryValues(t *testing.T, s session.Store) {
	id := NewID(t, "")
	odd := map[string][]byte{
		"empty":        {},
		"nul":          {0, 1, 0, 0xff, ':', '\n'},
		"colon:in:key": []byte("v:1:2"),
		"unicode-ключ": []byte("значение"),
		"_v":           []byte("looks like metadata"),
		"big":          bytes.Repeat([]byte{0xAB}, 64<<10),
	}
	create(t, s, id, odd)
	rec := mustLoad(t, s, id)
	if len(rec.Values) != len(odd) {
		t.Fatalf("keys %v, want %d keys", keys(rec.Values), len(odd))
	}
	for k, want := range odd {
		if got := rec.Values[k].Data; !bytes.Equal(got, want) {
			t.Errorf("key %q: %d bytes %.20q, want %d bytes %.20q", k, len(got), got, len(want), want)
		}
	}
}

// testNoSharedMemory: a store keeps no memory shared with its callers: the
// Values of a loaded record may be changed by the caller (a Manager decodes
// and edits them) without changing the store, and the bytes of a delta may
// be reused once Apply returns.
func testNoSharedMemory(t *testing.T, s session.Store) {
	ctx := ctxT(t)
	id := NewID(t, "")
	create(t, s, id, map[string][]byte{"a": []byte("1"), "b": []byte("2")})
	buf := []byte("set")
	if _, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"c": buf}, Idle: hour}); err != nil {
		t.Fatal(err)
	}
	copy(buf, "XXX")
	rec := mustLoad(t, s, id)
	wantValues(t, rec, map[string]string{"a": "1", "b": "2", "c": "set"})
	rec.Values["a"].Data[0] = 'X'
	rec.Values["new"] = session.Value{Data: []byte("n"), Version: 1}
	delete(rec.Values, "b")
	wantValues(t, mustLoad(t, s, id), map[string]string{"a": "1", "b": "2", "c": "set"})
}

func testVersions(t *testing.T, s session.Store) {
	ctx := ctxT(t)
	id := NewID(t, "")
	create(t, s, id, map[string][]byte{"n": []byte("0")})
	// Expect the right version.
	v, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"n": []byte("1")}, Expect: map[string]uint64{"n": 1}, Idle: hour})
	if err != nil || v != 2 {
		t.Fatalf("CAS with the right version: %d, %v; want 2, nil", v, err)
	}
	// The old version no longer matches.
	_, err = s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"n": []byte("x")}, Expect: map[string]uint64{"n": 1}, Idle: hour})
	var ce *session.ConflictError
	if !errors.Is(err, session.ErrConflict) || !errors.As(err, &ce) || ce.Key != "n" {
		t.Fatalf("CAS with a stale version: %v, want a *ConflictError on key n", err)
	}
	// 0 means absent.
	if _, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"new": []byte("1")}, Expect: map[string]uint64{"new": 0}, Idle: hour}); err != nil {
		t.Fatalf("CAS expecting an absent key: %v", err)
	}
	if _, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"new": []byte("2")}, Expect: map[string]uint64{"new": 0}, Idle: hour}); !errors.Is(err, session.ErrConflict) {
		t.Fatalf("CAS expecting absent on a present key: %v, want ErrConflict", err)
	}
	// Delete then set again: a new, higher version (no A-B-A).
	if _, err := s.Apply(ctx, id, session.Delta{Delete: []string{"n"}, Expect: map[string]uint64{"n": 2}, Idle: hour}); err != nil {
		t.Fatalf("CAS delete: %v", err)
	}
	if _, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"n": []byte("1")}, Expect: map[string]uint64{"n": 0}, Idle: hour}); err != nil {
		t.Fatalf("CAS re-create: %v", err)
	}
	rec := mustLoad(t, s, id)
	if got := rec.Values["n"].Version; got != 5 || rec.Version != 5 {
		t.Errorf("after delete and set again: key version %d, record %d; want 5, 5", got, rec.Version)
	}
	// Expect on a key not touched by the delta is a precondition only.
	if _, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"other": []byte("o")}, Expect: map[string]uint64{"n": 5}, Idle: hour}); err != nil {
		t.Fatalf("precondition on another key: %v", err)
	}
	if got := mustLoad(t, s, id).Values["n"].Version; got != 5 {
		t.Errorf("key checked but not set changed version to %d", got)
	}
}

func testConflictChangesNothing(t *testing.T, s session.Store) {
	ctx := ctxT(t)
	id := NewID(t, "")
	create(t, s, id, map[string][]byte{"a": []byte("1"), "b": []byte("2")})
	_, err := s.Apply(ctx, id, session.Delta{
		Set:    map[string][]byte{"a": []byte("changed"), "c": []byte("new")},
		Delete: []string{"b"},
		Expect: map[string]uint64{"a": 1, "b": 7},
		Idle:   hour,
	})
	if !errors.Is(err, session.ErrConflict) {
		t.Fatalf("Apply with one wrong expectation: %v, want ErrConflict", err)
	}
	rec := mustLoad(t, s, id)
	wantValues(t, rec, map[string]string{"a": "1", "b": "2"})
	if rec.Version != 1 {
		t.Errorf("version %d after a refused delta, want 1", rec.Version)
	}
}

func testInvalidDelta(t *testing.T, s session.Store) {
	ctx := ctxT(t)
	id := NewID(t, "")
	if _, err := s.Apply(ctx, id, session.Delta{Create: &session.Create{Absolute: hour}}); err == nil {
		t.Error("Apply without an idle timeout: no error")
	}
	if _, err := s.Apply(ctx, id, session.Delta{Create: &session.Create{}, Idle: hour}); err == nil {
		t.Error("create without an absolute timeout: no error")
	}
	wantMissing(t, s, id)
	create(t, s, id, nil)
	if _, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"a": nil}, Delete: []string{"a"}, Idle: hour}); err == nil {
		t.Error("key both set and deleted: no error")
	}
}

func testDeleteMissing(t *testing.T, s session.Store) {
	ctx := ctxT(t)
	id := NewID(t, "")
	if err := s.Delete(ctx, id); err != nil {
		t.Fatalf("Delete of a missing record: %v", err)
	}
	create(t, s, id, nil)
	for i := range 2 {
		if err := s.Delete(ctx, id); err != nil {
			t.Fatalf("Delete #%d: %v", i+1, err)
		}
	}
	wantMissing(t, s, id)
}

func testCancelledContext(t *testing.T, s session.Store) {
	id := NewID(t, "")
	create(t, s, id, map[string][]byte{"a": []byte("1")})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, _, err := s.Load(ctx, id, hour); !errors.Is(err, context.Canceled) {
		t.Errorf("Load with a cancelled context: %v, want context.Canceled", err)
	}
	if _, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"a": []byte("2")}, Idle: hour}); !errors.Is(err, context.Canceled) {
		t.Errorf("Apply with a cancelled context: %v, want context.Canceled", err)
	}
	if err := s.Delete(ctx, id); !errors.Is(err, context.Canceled) {
		t.Errorf("Delete with a cancelled context: %v, want context.Canceled", err)
	}
	if a, ok := s.(session.Aliaser); ok {
		if err := a.Alias(ctx, id, NewID(t, ""), 1, time.Second); !errors.Is(err, context.Canceled) {
			t.Errorf("Alias with a cancelled context: %v, want context.Canceled", err)
		}
	}
	if u, ok := s.(session.UserIndex); ok {
		if _, err := u.Sessions(ctx, "u"); !errors.Is(err, context.Canceled) {
			t.Errorf("Sessions with a cancelled context: %v, want context.Canceled", err)
		}
		if err := u.DestroyUser(ctx, "u"); !errors.Is(err, context.Canceled) {
			t.Errorf("DestroyUser with a cancelled context: %v, want context.Canceled", err)
		}
	}
	// Nothing was applied by the cancelled calls: a store checks ctx before
	// sending, so the record is as it was.
	wantValues(t, mustLoad(t, s, id), map[string]string{"a": "1"})
}

func scale(n int) int {
	if testing.Short() {
		return max(n/10, 2)
	}
	return n
}

func testConcurrentKeys(t *testing.T, s session.Store) {
	ctx := ctxT(t)
	id := NewID(t, "")
	create(t, s, id, nil)
	workers, per := 8, scale(50)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range per {
				k := fmt.Sprintf("w%d-%d", w, i)
				if _, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{k: []byte(k)}, Idle: hour}); err != nil {
					errs <- fmt.Errorf("apply %s: %w", k, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	rec := mustLoad(t, s, id)
	if len(rec.Values) != workers*per {
		t.Fatalf("%d keys after %d concurrent writes of different keys: %d lost", len(rec.Values), workers*per, workers*per-len(rec.Values))
	}
	if rec.Version != uint64(1+workers*per) {
		t.Errorf("version %d, want %d", rec.Version, 1+workers*per)
	}
}

func testConcurrentCAS(t *testing.T, s session.Store) {
	ctx := ctxT(t)
	id := NewID(t, "")
	create(t, s, id, map[string][]byte{"n": []byte("0")})
	workers, per := 8, scale(20)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	var mu sync.Mutex
	conflicts := 0
	for range workers {
		wg.Go(func() {
			for range per {
				for {
					rec, found, err := s.Load(ctx, id, hour)
					if err != nil || !found {
						errs <- fmt.Errorf("load: found=%v, %v", found, err)
						return
					}
					cur := rec.Values["n"]
					n, err := strconv.Atoi(string(cur.Data))
					if err != nil {
						errs <- fmt.Errorf("counter %q: %w", cur.Data, err)
						return
					}
					// Let the others read too, as a handler working
					// between its read and its write would: without it,
					// an in-process store's read and write run back to
					// back and never race.
					runtime.Gosched()
					_, err = s.Apply(ctx, id, session.Delta{
						Set:    map[string][]byte{"n": []byte(strconv.Itoa(n + 1))},
						Expect: map[string]uint64{"n": cur.Version},
						Idle:   hour,
					})
					if err == nil {
						break
					}
					if !errors.Is(err, session.ErrConflict) {
						errs <- fmt.Errorf("apply: %w", err)
						return
					}
					mu.Lock()
					conflicts++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got := string(mustLoad(t, s, id).Values["n"].Data)
	if want := strconv.Itoa(workers * per); got != want {
		t.Fatalf("counter = %s after %s compare-and-set increments", got, want)
	}
	t.Logf("%d increments, %d conflicts retried", workers*per, conflicts)
}

func testIdleExpiry(t *testing.T, s session.Store) {
	id := NewID(t, "")
	const idle = 300 * time.Millisecond
	start := time.Now()
	if _, err := s.Apply(ctxT(t), id, session.Delta{Create: &session.Create{Absolute: hour}, Set: map[string][]byte{"a": []byte("1")}, Idle: idle}); err != nil {
		t.Fatal(err)
	}
	poll(t, "record gone after its idle timeout", func() bool {
		_, found := load(t, s, id)
		return !found
	})
	if el := time.Since(start); el < idle {
		t.Fatalf("record gone after %v, before its idle timeout %v", el, idle)
	}
	if _, err := s.Apply(ctxT(t), id, session.Delta{Set: map[string][]byte{"a": []byte("2")}, Idle: hour}); !errors.Is(err, session.ErrNotFound) {
		t.Fatalf("Apply to an expired record: %v, want ErrNotFound", err)
	}
	wantMissing(t, s, id)
}

func testAbsoluteExpiry(t *testing.T, s session.Store) {
	ctx := ctxT(t)
	id := NewID(t, "")
	const absolute = 400 * time.Millisecond
	start := time.Now()
	if _, err := s.Apply(ctx, id, session.Delta{Create: &session.Create{Absolute: absolute}, Idle: hour}); err != nil {
		t.Fatal(err)
	}
	// Activity does not extend past the absolute deadline.
	poll(t, "record gone after its absolute timeout despite activity", func() bool {
		rec, found, err := s.Load(ctx, id, hour)
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		if found && rec.IdleDeadline.After(rec.AbsoluteDeadline) {
			t.Fatalf("idle deadline %v past absolute deadline %v", rec.IdleDeadline, rec.AbsoluteDeadline)
		}
		if found {
			if _, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"a": []byte("x")}, Idle: hour}); err != nil && !errors.Is(err, session.ErrNotFound) {
				t.Fatalf("Apply: %v", err)
			}
		}
		return !found
	})
	if el := time.Since(start); el < absolute {
		t.Fatalf("record gone after %v, before its absolute timeout %v", el, absolute)
	}
	wantMissing(t, s, id)
	// A write after the absolute deadline, with a long idle timeout, is
	// refused too: the idle deadline never kept it alive.
	if _, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"b": []byte("late")}, Idle: hour}); !errors.Is(err, session.ErrNotFound) {
		t.Fatalf("Apply after the absolute deadline: %v, want ErrNotFound", err)
	}
	wantMissing(t, s, id)
}

func testLoadRefreshesIdle(t *testing.T, s session.Store) {
	ctx := ctxT(t)
	id := NewID(t, "")
	const idle = 300 * time.Millisecond
	start := time.Now()
	if _, err := s.Apply(ctx, id, session.Delta{Create: &session.Create{Absolute: hour}, Idle: idle}); err != nil {
		t.Fatal(err)
	}
	rec, found, err := s.Load(ctx, id, hour)
	if err != nil || !found {
		t.Fatalf("Load: found=%v, %v", found, err)
	}
	if d := rec.IdleDeadline.Sub(rec.Created); d < hour-time.Minute {
		t.Errorf("idle deadline %v after creation, want about 1h", d)
	}
	// A load without refresh does not move it back.
	if rec2 := mustLoad(t, s, id); rec2.IdleDeadline.Before(rec.IdleDeadline) {
		t.Errorf("Load(idle=0) moved the idle deadline back from %v to %v", rec.IdleDeadline, rec2.IdleDeadline)
	}
	// A refresh with a shorter idle timeout does not move it back either.
	if rec3, _, err := s.Load(ctx, id, idle); err != nil || rec3.IdleDeadline.Before(rec.IdleDeadline.Add(-time.Millisecond)) {
		t.Errorf("Load(idle=%v) moved the idle deadline back from %v to %v (%v)", idle, rec.IdleDeadline, rec3.IdleDeadline, err)
	}
	// The record outlives its first idle timeout by far.
	poll(t, "three idle timeouts elapse", func() bool {
		mustLoad(t, s, id)
		return time.Since(start) > 3*idle
	})
}

// testLoadKeepsShortIdleAlive: a session only read, with refresh, every
// pollStep outlives its short idle timeout several times over. A store may
// skip a refresh within a resolution of at most a tenth of the idle timeout
// (see session.Store.Load), never more: a store whose resolution is a fixed
// second never refreshes a session with an idle timeout under a second, and
// a user who only reads is logged out mid-use. (The idle timeout leaves
// the test most of a second to make its next Load on a loaded machine.)
func testLoadKeepsShortIdleAlive(t *testing.T, s session.Store) {
	ctx := ctxT(t)
	id := NewID(t, "")
	const idle = 800 * time.Millisecond
	start := time.Now()
	if _, err := s.Apply(ctx, id, session.Delta{Create: &session.Create{Absolute: hour}, Idle: idle}); err != nil {
		t.Fatal(err)
	}
	last := start
	poll(t, "three idle timeouts elapse", func() bool {
		if _, found, err := s.Load(ctx, id, idle); err != nil || !found {
			t.Fatalf("Load(idle=%v) %v after the last one: found=%v, %v after %v; want found", idle, time.Since(last), found, err, time.Since(start))
		}
		last = time.Now()
		return time.Since(start) > 3*idle
	})
}

// testApplyIdleNeverBackwards: an Apply with a shorter idle timeout than
// the last one (two instances configured differently) does not move the
// idle deadline back, and the record outlives the short timeout; a longer
// one still moves it forward.
func testApplyIdleNeverBackwards(t *testing.T, s session.Store) {
	ctx := ctxT(t)
	id := NewID(t, "")
	const short = 300 * time.Millisecond
	start := time.Now()
	if _, err := s.Apply(ctx, id, session.Delta{Create: &session.Create{Absolute: 3 * hour}, Idle: hour}); err != nil {
		t.Fatal(err)
	}
	first := mustLoad(t, s, id).IdleDeadline
	if _, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"a": []byte("1")}, Idle: short}); err != nil {
		t.Fatal(err)
	}
	// A store may read the deadline to the millisecond only (Redis before
	// 7.0 gives it as now + PTTL), so a reading 1ms earlier is the same.
	if got := mustLoad(t, s, id).IdleDeadline; got.Before(first.Add(-time.Millisecond)) {
		t.Fatalf("Apply(Idle=%v) moved the idle deadline back from %v to %v", short, first, got)
	}
	poll(t, "three short idle timeouts elapse", func() bool {
		mustLoad(t, s, id)
		return time.Since(start) > 3*short
	})
	if _, err := s.Apply(ctx, id, session.Delta{Idle: 2 * hour}); err != nil {
		t.Fatal(err)
	}
	if got := mustLoad(t, s, id).IdleDeadline; got.Sub(first) < 59*time.Minute {
		t.Errorf("Apply(Idle=2h) moved the idle deadline from %v to %v, want about 1h later", first, got)
	}
}

func testAlias(t *testing.T, s session.Store) {
	a, ok := s.(session.Aliaser)
	if !ok {
		t.Skip("store does not implement session.Aliaser")
	}
	ctx := ctxT(t)
	oldID, newID := NewID(t, ""), NewID(t, "")
	create(t, s, oldID, map[string][]byte{"a": []byte("old")})
	rec := mustLoad(t, s, oldID)
	if _, err := s.Apply(ctx, newID, session.Delta{
		Create: &session.Create{Deadline: rec.AbsoluteDeadline, Created: rec.Created},
		Set:    map[string][]byte{"a": []byte("copied")},
		Idle:   hour,
	}); err != nil {
		t.Fatalf("create the copy: %v", err)
	}
	if got := mustLoad(t, s, newID); !got.AbsoluteDeadline.Equal(rec.AbsoluteDeadline) || !got.Created.Equal(rec.Created) {
		t.Errorf("copy has created %v, deadline %v; want %v, %v", got.Created, got.AbsoluteDeadline, rec.Created, rec.AbsoluteDeadline)
	}
	// A write to the old ID since it was read: the alias is refused.
	if _, err := s.Apply(ctx, oldID, session.Delta{Set: map[string][]byte{"b": []byte("late")}, Idle: hour}); err != nil {
		t.Fatal(err)
	}
	if err := a.Alias(ctx, oldID, newID, 1, time.Minute); !errors.Is(err, session.ErrConflict) {
		t.Fatalf("Alias with a stale version: %v, want ErrConflict", err)
	}
	if err := a.Alias(ctx, oldID, newID, 2, time.Minute); err != nil {
		t.Fatalf("Alias: %v", err)
	}
	// The old ID resolves to the new record, for reads and writes.
	got := mustLoad(t, s, oldID)
	if got.ID != newID {
		t.Errorf("Load(old).ID = %q, want the new ID %q", got.ID, newID)
	}
	wantValues(t, got, map[string]string{"a": "copied"})
	if _, err := s.Apply(ctx, oldID, session.Delta{Set: map[string][]byte{"c": []byte("via alias")}, Idle: hour}); err != nil {
		t.Fatalf("Apply through the alias: %v", err)
	}
	wantValues(t, mustLoad(t, s, newID), map[string]string{"a": "copied", "c": "via alias"})
	// An alias cannot be aliased again.
	if err := a.Alias(ctx, oldID, NewID(t, ""), got.Version, time.Minute); !errors.Is(err, session.ErrNotFound) {
		t.Errorf("Alias of an alias: %v, want ErrNotFound", err)
	}
	if err := a.Alias(ctx, NewID(t, ""), newID, 1, time.Minute); !errors.Is(err, session.ErrNotFound) {
		t.Errorf("Alias of a missing ID: %v, want ErrNotFound", err)
	}
	// A live alias exists: creating over it is refused.
	if _, err := s.Apply(ctx, oldID, session.Delta{Create: &session.Create{Absolute: hour}, Idle: hour}); !errors.Is(err, session.ErrConflict) {
		t.Errorf("create over a live alias: %v, want ErrConflict", err)
	}
	if got := mustLoad(t, s, oldID); got.ID != newID {
		t.Errorf("after a refused create, Load(old).ID = %q, want %q", got.ID, newID)
	}
	// Deleting through the alias destroys the session.
	if err := s.Delete(ctx, oldID); err != nil {
		t.Fatal(err)
	}
	wantMissing(t, s, newID)
	wantMissing(t, s, oldID)
}

func testAliasGrace(t *testing.T, s session.Store) {
	a, ok := s.(session.Aliaser)
	if !ok {
		t.Skip("store does not implement session.Aliaser")
	}
	ctx := ctxT(t)
	oldID, newID := NewID(t, ""), NewID(t, "")
	create(t, s, oldID, nil)
	create(t, s, newID, map[string][]byte{"a": []byte("1")})
	const grace = 300 * time.Millisecond
	start := time.Now()
	if err := a.Alias(ctx, oldID, newID, 1, grace); err != nil {
		t.Fatal(err)
	}
	poll(t, "alias gone after its grace period", func() bool {
		_, found := load(t, s, oldID)
		return !found
	})
	if el := time.Since(start); el < grace {
		t.Fatalf("alias gone after %v, before its grace period %v", el, grace)
	}
	wantValues(t, mustLoad(t, s, newID), map[string]string{"a": "1"})
	if _, err := s.Apply(ctx, oldID, session.Delta{Set: map[string][]byte{"b": []byte("2")}, Idle: hour}); !errors.Is(err, session.ErrNotFound) {
		t.Fatalf("Apply to an ended alias: %v, want ErrNotFound", err)
	}
}

// testAliasExpect: a delta with expected versions on an alias changes
// nothing and fails with a *ConflictError whose Key is "": its versions
// were read from the record before it was copied to the target, whose
// versions start again, so a stale one could match there (A-B-A across a
// renewal). Read again through the alias, it applies to the target's ID.
func testAliasExpect(t *testing.T, s session.Store) {
	a, ok := s.(session.Aliaser)
	if !ok {
		t.Skip("store does not implement session.Aliaser")
	}
	ctx := ctxT(t)
	oldID, newID := NewID(t, ""), NewID(t, "")
	create(t, s, oldID, map[string][]byte{"k": []byte("read")}) // read at version 1
	if _, err := s.Apply(ctx, oldID, session.Delta{Set: map[string][]byte{"k": []byte("later")}, Idle: hour}); err != nil {
		t.Fatal(err)
	}
	// The renewal copies k, which is at version 1 again in the copy.
	rec := mustLoad(t, s, oldID)
	if _, err := s.Apply(ctx, newID, session.Delta{
		Create: &session.Create{Deadline: rec.AbsoluteDeadline, Created: rec.Created},
		Set:    map[string][]byte{"k": rec.Values["k"].Data},
		Idle:   hour,
	}); err != nil {
		t.Fatal(err)
	}
	if err := a.Alias(ctx, oldID, newID, rec.Version, time.Minute); err != nil {
		t.Fatal(err)
	}
	for name, d := range map[string]session.Delta{
		"set":          {Set: map[string][]byte{"k": []byte("stale")}, Expect: map[string]uint64{"k": 1}},
		"delete":       {Delete: []string{"k"}, Expect: map[string]uint64{"k": 1}},
		"absent":       {Set: map[string][]byte{"n": []byte("1")}, Expect: map[string]uint64{"n": 0}},
		"precondition": {Set: map[string][]byte{"other": []byte("x")}, Expect: map[string]uint64{"k": 1}},
	} {
		d.Idle = hour
		_, err := s.Apply(ctx, oldID, d)
		var ce *session.ConflictError
		if !errors.As(err, &ce) || ce.Key != "" || !errors.Is(err, session.ErrConflict) {
			t.Errorf("%s with expected versions through an alias: %v, want a *ConflictError with Key \"\"", name, err)
		}
	}
	got := mustLoad(t, s, oldID)
	if got.ID != newID || got.Version != 1 {
		t.Errorf("after refused deltas: Load(old) = %s at version %d, want %s at version 1", got.ID, got.Version, newID)
	}
	wantValues(t, got, map[string]string{"k": "later"})
	// Read again through the alias, the compare-and-set goes to the
	// target's ID; a delta without expectations still follows the alias.
	if _, err := s.Apply(ctx, got.ID, session.Delta{Set: map[string][]byte{"k": []byte("next")}, Expect: map[string]uint64{"k": got.Values["k"].Version}, Idle: hour}); err != nil {
		t.Fatalf("compare-and-set on the target: %v", err)
	}
	if _, err := s.Apply(ctx, oldID, session.Delta{Set: map[string][]byte{"b": []byte("1")}, Idle: hour}); err != nil {
		t.Fatalf("a delta without expectations through the alias: %v", err)
	}
	wantValues(t, mustLoad(t, s, newID), map[string]string{"k": "next", "b": "1"})
}

func testUserIndex(t *testing.T, s session.Store) {
	u, ok := s.(session.UserIndex)
	if !ok {
		t.Skip("store does not implement session.UserIndex")
	}
	ctx := ctxT(t)
	user, other := "alice@example.com", "bob@example.com"
	s1, s2, s3 := NewID(t, user), NewID(t, user), NewID(t, other)
	anon := NewID(t, "")
	// Bound at creation, or later.
	if _, err := s.Apply(ctx, s1, session.Delta{Create: &session.Create{Absolute: hour}, User: user, Idle: hour}); err != nil {
		t.Fatal(err)
	}
	create(t, s, s2, nil)
	if _, err := s.Apply(ctx, s2, session.Delta{User: user, Set: map[string][]byte{"a": []byte("1")}, Idle: hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(ctx, s3, session.Delta{Create: &session.Create{Absolute: hour}, User: other, Idle: hour}); err != nil {
		t.Fatal(err)
	}
	create(t, s, anon, nil)
	if rec := mustLoad(t, s, s2); rec.User != user {
		t.Errorf("record user %q, want %q", rec.User, user)
	}
	ids, err := u.Sessions(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(ids)
	want := []string{s1, s2}
	slices.Sort(want)
	if !slices.Equal(ids, want) {
		t.Fatalf("Sessions(%s) = %v, want %v", user, ids, want)
	}
	// A deleted session leaves the list.
	if err := s.Delete(ctx, s1); err != nil {
		t.Fatal(err)
	}
	if ids, err := u.Sessions(ctx, user); err != nil || !slices.Equal(ids, []string{s2}) {
		t.Fatalf("Sessions after Delete = %v, %v; want [%s]", ids, err, s2)
	}
	// Log out everywhere.
	if err := u.DestroyUser(ctx, user); err != nil {
		t.Fatal(err)
	}
	wantMissing(t, s, s2)
	if _, err := s.Apply(ctx, s2, session.Delta{Set: map[string][]byte{"b": []byte("2")}, Idle: hour}); !errors.Is(err, session.ErrNotFound) {
		t.Fatalf("Apply to a revoked session: %v, want ErrNotFound", err)
	}
	wantMissing(t, s, s2)
	if ids, err := u.Sessions(ctx, user); err != nil || len(ids) != 0 {
		t.Fatalf("Sessions after DestroyUser = %v, %v; want none", ids, err)
	}
	// Other users and anonymous sessions are untouched.
	mustLoad(t, s, s3)
	mustLoad(t, s, anon)
	// A session bound after the revocation lives.
	s4 := NewID(t, user)
	if _, err := s.Apply(ctx, s4, session.Delta{Create: &session.Create{Absolute: hour}, User: user, Idle: hour}); err != nil {
		t.Fatal(err)
	}
	if rec := mustLoad(t, s, s4); rec.User != user {
		t.Errorf("new session after DestroyUser: user %q", rec.User)
	}
	if ids, err := u.Sessions(ctx, user); err != nil || !slices.Equal(ids, []string{s4}) {
		t.Fatalf("Sessions after a new login = %v, %v; want [%s]", ids, err, s4)
	}
	// DestroyUser of a user without sessions is no error.
	if err := u.DestroyUser(ctx, "nobody"); err != nil {
		t.Fatalf("DestroyUser(nobody): %v", err)
	}
}

// testUserIndexExpiry: Sessions lists live sessions only: a bound session
// that ended by its idle timeout leaves the list, as a deleted one does.
func testUserIndexExpiry(t *testing.T, s session.Store) {
	u, ok := s.(session.UserIndex)
	if !ok {
		t.Skip("store does not implement session.UserIndex")
	}
	ctx := ctxT(t)
	user := "erin@example.com"
	short, long := NewID(t, user), NewID(t, user)
	const idle = 300 * time.Millisecond
	for id, idle := range map[string]time.Duration{short: idle, long: hour} {
		if _, err := s.Apply(ctx, id, session.Delta{Create: &session.Create{Absolute: hour}, User: user, Idle: idle}); err != nil {
			t.Fatal(err)
		}
	}
	poll(t, "short session gone after its idle timeout", func() bool {
		_, found := load(t, s, short)
		return !found
	})
	ids, err := u.Sessions(ctx, user)
	if err != nil || !slices.Equal(ids, []string{long}) {
		t.Fatalf("Sessions after one session's idle timeout = %v, %v; want [%s]", ids, err, long)
	}
}

// sizeLimiter returns whether s enforces Delta.MaxSize, skipping t if not.
func sizeLimiter(t *testing.T, s session.Store) {
	t.Helper()
	if sl, ok := s.(session.SizeLimiter); !ok || !sl.EnforcesMaxSize() {
		t.Skip("the store does not enforce Delta.MaxSize")
	}
}

func wantTooLarge(t *testing.T, what string, err error, size, limit int) {
	t.Helper()
	var se *session.SizeError
	if !errors.Is(err, session.ErrTooLarge) || !errors.As(err, &se) || !se.Session || se.Limit != limit || se.Size != size {
		t.Fatalf("%s: %v, want a session *SizeError of %d bytes, limit %d", what, err, size, limit)
	}
}

func testMaxSize(t *testing.T, s session.Store) {
	sizeLimiter(t, s)
	ctx := ctxT(t)
	apply := func(id string, d session.Delta) error {
		d.Idle = hour
		_, err := s.Apply(ctx, id, d)
		return err
	}
	// A create over the limit creates nothing.
	id := NewID(t, "")
	err := apply(id, session.Delta{Create: &session.Create{Absolute: hour}, Set: map[string][]byte{"a": []byte("0123456789")}, MaxSize: 10})
	wantTooLarge(t, "create over the limit", err, 11, 10)
	wantMissing(t, s, id)

	create(t, s, id, map[string][]byte{"a": []byte("12345")}) // 6 bytes
	err = apply(id, session.Delta{Set: map[string][]byte{"b": []byte("0123456789")}, MaxSize: 16})
	wantTooLarge(t, "a key that takes the session over", err, 17, 16)
	rec := mustLoad(t, s, id)
	wantValues(t, rec, map[string]string{"a": "12345"})
	if rec.Version != 1 {
		t.Errorf("version %d after a refused delta, want 1", rec.Version)
	}
	if err := apply(id, session.Delta{Set: map[string][]byte{"b": []byte("123456789")}, MaxSize: 16}); err != nil {
		t.Fatalf("a key that fills the session exactly: %v", err)
	}
	// Replacing a value counts the new one only; still over is refused.
	err = apply(id, session.Delta{Set: map[string][]byte{"a": []byte("1")}, MaxSize: 11})
	wantTooLarge(t, "a smaller value, still over the limit", err, 12, 11)
	if err := apply(id, session.Delta{Set: map[string][]byte{"a": []byte("1")}, MaxSize: 12}); err != nil {
		t.Fatalf("a smaller value within the limit: %v", err)
	}
	// Deleting is always allowed, and frees the space: b was 10 bytes.
	if err := apply(id, session.Delta{Delete: []string{"b", "b", "never-set"}, MaxSize: 1}); err != nil {
		t.Fatalf("delete over the limit: %v", err)
	}
	// A delta that deletes and sets is measured after both: a=2 bytes, c=4.
	if err := apply(id, session.Delta{Set: map[string][]byte{"c": []byte("xyz")}, Delete: []string{"a"}, MaxSize: 4}); err != nil {
		t.Fatalf("delete and set within the limit: %v", err)
	}
	err = apply(id, session.Delta{Set: map[string][]byte{"d": []byte("x")}, MaxSize: 5})
	wantTooLarge(t, "one byte over after deletions", err, 6, 5)
	// A delta without MaxSize is not limited, and is counted.
	if err := apply(id, session.Delta{Set: map[string][]byte{"big": bytes.Repeat([]byte("x"), 100)}}); err != nil {
		t.Fatalf("no limit: %v", err)
	}
	err = apply(id, session.Delta{Set: map[string][]byte{"e": nil}, MaxSize: 100})
	wantTooLarge(t, "after an unlimited delta", err, 4+103+1, 100)
	// Sizes are in bytes, values binary.
	id2 := NewID(t, "")
	create(t, s, id2, map[string][]byte{"é": {0, 0xff, ':'}})
	err = apply(id2, session.Delta{Set: map[string][]byte{"x": nil}, MaxSize: 5})
	wantTooLarge(t, "binary values", err, 6, 5)
}

func testConcurrentMaxSize(t *testing.T, s session.Store) {
	sizeLimiter(t, s)
	ctx := ctxT(t)
	id := NewID(t, "")
	create(t, s, id, nil)
	// 20 writers each add a key of 13 bytes to a session limited to 100:
	// exactly 7 fit, however the writes interleave.
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, tooLarge := 0, 0
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Go(func() {
			k := fmt.Sprintf("k%02d", i)
			_, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{k: []byte("0123456789")}, Idle: hour, MaxSize: 100})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, session.ErrTooLarge):
				tooLarge++
			default:
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if rec := mustLoad(t, s, id); ok != 7 || tooLarge != 13 || len(rec.Values) != 7 {
		t.Fatalf("%d writes accepted, %d refused, %d keys stored; want 7, 13, 7", ok, tooLarge, len(rec.Values))
	}
}
