package memcachedstore_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/memcachedstore"
	"github.com/activekit/activekit/session/sessiontest"
)

// TestDeleteRacesAlias: another instance's Alias (a renewal) lands between
// Delete's read of a live record and its delete. Before, Delete deleted the
// key (by then the alias) and stopped, since it had read a record: the
// renewed copy lived on under the new ID, whose token the renewal's response
// carries, so a log-out lost to a renewal. Now the delete is a cas on the
// item read, and a lost race reads again: the alias is followed and the copy
// deleted too.
func TestDeleteRacesAlias(t *testing.T) {
	c := newClient(t)
	p := prefix(t)
	other := newStore(t, c, p)
	var hook atomic.Pointer[func()]
	s := newStore(t, c, p, memcachedstore.WithClock(func() time.Time {
		if f := hook.Swap(nil); f != nil {
			(*f)()
		}
		return time.Now()
	}))
	ctx := t.Context()
	oldID, newID := sessiontest.NewID(t, ""), sessiontest.NewID(t, "")
	for _, id := range []string{oldID, newID} {
		if _, err := other.Apply(ctx, id, session.Delta{Create: &session.Create{Absolute: hour}, Set: map[string][]byte{"k": []byte("v")}, Idle: hour}); err != nil {
			t.Fatal(err)
		}
	}
	var once sync.Once
	alias := func() {
		once.Do(func() {
			if err := other.Alias(ctx, oldID, newID, 1, hour); err != nil {
				t.Errorf("Alias: %v", err)
			}
		})
	}
	hook.Store(&alias) // runs in Delete's read, after its get
	if err := s.Delete(ctx, oldID); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{oldID, newID} {
		if _, found, err := other.Load(ctx, id, 0); err != nil || found {
			t.Errorf("Load %s after Delete raced with an Alias: found=%v %v; want gone", id, found, err)
		}
	}
}

// TestDeleteCancelledThroughAlias: a Delete through an alias whose context
// ends half-way leaves a state that a second Delete of the same ID ends:
// never the alias gone and its target (the renewed session) alive, which no
// ID the caller knows reaches any more.
func TestDeleteCancelledThroughAlias(t *testing.T) {
	c := newClient(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var reads atomic.Int32 // Delete reads the clock once per item read
	s := newStore(t, c, prefix(t), memcachedstore.WithClock(func() time.Time {
		if reads.Load() > 0 && reads.Add(-1) == 0 {
			cancel()
		}
		return time.Now()
	}))
	oldID, newID := sessiontest.NewID(t, ""), sessiontest.NewID(t, "")
	create(t, s, oldID, session.Delta{})
	create(t, s, newID, session.Delta{})
	if err := s.Alias(t.Context(), oldID, newID, 1, hour); err != nil {
		t.Fatal(err)
	}
	reads.Store(2) // cancelled in the second read: the alias's target
	if err := s.Delete(ctx, oldID); !errors.Is(err, context.Canceled) {
		t.Fatalf("Delete cancelled half-way: %v, want context.Canceled", err)
	}
	if err := s.Delete(t.Context(), oldID); err != nil {
		t.Fatal(err)
	}
	if found(t, s, newID) {
		t.Fatal("after a cancelled Delete and a second one, the renewed session lives on")
	}
}
