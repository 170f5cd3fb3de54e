package memcachedstore_test

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/memcachedstore"
	"github.com/activekit/activekit/session/sessiontest"
)

// TestFleetMixedWrites: four instances (each its own client) write one
// user-bound session at once: writes of different keys, compare-and-set
// increments of one key, and reads whose idle refresh is itself a cas write
// (a short idle timeout makes nearly every read refresh). None of the
// acknowledged writes is lost, and the version counts exactly them.
func TestFleetMixedWrites(t *testing.T) {
	p := prefix(t)
	const instances = 4
	var stores []*memcachedstore.Store
	for range instances {
		stores = append(stores, newStore(t, newClient(t), p))
	}
	ctx := t.Context()
	user := "fleet@example.com"
	id := sessiontest.NewID(t, user)
	const idle = 2 * time.Second // refreshed by a read once it gains 200ms
	create(t, stores[0], id, session.Delta{User: user, Idle: idle, Set: map[string][]byte{"n": []byte("0")}})

	n := 300
	if testing.Short() {
		n = 50
	}
	var wg sync.WaitGroup
	var acked, incs atomic.Int64
	var keyed sync.Map
	stop := make(chan struct{})
	errs := make(chan error, 32)
	report := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	for w := range 8 { // writers of their own keys
		s := stores[w%instances]
		wg.Go(func() {
			for i := range n / 8 {
				k := fmt.Sprintf("w%d-%d", w, i)
				for {
					_, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{k: []byte(k)}, Idle: idle, User: user})
					if err == nil {
						keyed.Store(k, true)
						acked.Add(1)
						break
					}
					if !errors.Is(err, memcachedstore.ErrContention) {
						report(fmt.Errorf("set %s: %w", k, err))
						return
					}
				}
			}
		})
	}
	for w := range 4 { // compare-and-set increments
		s := stores[(w+1)%instances]
		wg.Go(func() {
			for incs.Add(1) <= int64(n/2) {
				for {
					rec, ok, err := s.Load(ctx, id, idle)
					if err != nil || !ok {
						report(fmt.Errorf("load: found=%v, %v", ok, err))
						return
					}
					v, _ := strconv.Atoi(string(rec.Values["n"].Data))
					_, err = s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"n": []byte(strconv.Itoa(v + 1))}, Expect: map[string]uint64{"n": rec.Values["n"].Version}, Idle: idle})
					if err == nil {
						acked.Add(1)
						break
					}
					if !errors.Is(err, session.ErrConflict) && !errors.Is(err, memcachedstore.ErrContention) {
						report(fmt.Errorf("increment: %w", err))
						return
					}
				}
			}
		})
	}
	var readers sync.WaitGroup
	for w := range 4 { // readers that refresh
		s := stores[(w+2)%instances]
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, ok, err := s.Load(ctx, id, idle); err != nil || !ok {
					report(fmt.Errorf("refreshing load: found=%v, %v", ok, err))
					return
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	rec, ok, err := stores[3].Load(ctx, id, 0)
	if err != nil || !ok {
		t.Fatalf("final Load: %v, %v", ok, err)
	}
	keyed.Range(func(k, _ any) bool {
		if _, ok := rec.Values[k.(string)]; !ok {
			t.Errorf("acknowledged key %s lost", k)
		}
		return true
	})
	if got := string(rec.Values["n"].Data); got != strconv.Itoa(n/2) {
		t.Errorf("counter = %s after %d acknowledged increments", got, n/2)
	}
	if want := uint64(1 + acked.Load()); rec.Version != want {
		t.Errorf("version %d, want %d (one per acknowledged write)", rec.Version, want)
	}
}

// TestFleetDestroyUserDuringWrites: while three instances write and read a
// user's sessions, a fourth logs the user out everywhere. Once DestroyUser
// has returned, no instance finds any of them again, writes included.
func TestFleetDestroyUserDuringWrites(t *testing.T) {
	p := prefix(t)
	var stores []*memcachedstore.Store
	for range 4 {
		stores = append(stores, newStore(t, newClient(t), p))
	}
	ctx := t.Context()
	user := "revoked@example.com"
	var ids []string
	for range 3 {
		id := sessiontest.NewID(t, user)
		create(t, stores[0], id, session.Delta{User: user})
		ids = append(ids, id)
	}
	var destroyed atomic.Bool
	started := make(chan struct{}, 6)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 6 {
		s, id := stores[w%3], ids[w%3]
		wg.Go(func() {
			for i := 0; ; i++ {
				after := destroyed.Load()
				_, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{fmt.Sprint("k", w): []byte(strconv.Itoa(i))}, Idle: hour, User: user})
				if i == 5 {
					started <- struct{}{}
				}
				switch {
				case err == nil && after:
					errs <- fmt.Errorf("Apply to %s started after DestroyUser returned succeeded", id)
					return
				case errors.Is(err, session.ErrNotFound): // revoked
					_, ok, lerr := s.Load(ctx, id, hour)
					if lerr != nil || ok {
						errs <- fmt.Errorf("Load after a revoked write: found=%v, %v", ok, lerr)
					}
					return
				case err != nil && !errors.Is(err, memcachedstore.ErrContention):
					errs <- err
					return
				}
			}
		})
	}
	for range 6 {
		<-started
	}
	if err := stores[3].DestroyUser(ctx, user); err != nil {
		t.Fatal(err)
	}
	destroyed.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, s := range stores {
		for _, id := range ids {
			if found(t, s, id) {
				t.Errorf("%s found after DestroyUser", id)
			}
		}
	}
	if got, err := stores[1].Sessions(ctx, user); err != nil || len(got) != 0 {
		t.Errorf("Sessions after DestroyUser = %v, %v", got, err)
	}
}
