package memstore

import (
	"fmt"
	"testing"
	"time"

	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/sessiontest"
)

// TestDestroyUserKeepsNothing: log out everywhere, and moving a session to
// another user, leave nothing behind for the user. Before, every user ever
// passed to DestroyUser kept a revocation epoch in the store for the life of
// the process, with or without sessions: memory that grew with each
// distinct user logged out everywhere. The index of a memstore holds every
// bound session, and DestroyUser drops them all, so no epoch is needed.
func TestDestroyUserKeepsNothing(t *testing.T) {
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	bind := func(id, user string, create bool) {
		t.Helper()
		d := session.Delta{User: user, Idle: time.Hour}
		if create {
			d.Create = &session.Create{Absolute: time.Hour}
		}
		if _, err := s.Apply(ctx, id, d); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 100 {
		user := fmt.Sprintf("user%d@example.com", i)
		bind(sessiontest.NewID(t, user), user, true)
		if err := s.DestroyUser(ctx, user); err != nil {
			t.Fatal(err)
		}
		if err := s.DestroyUser(ctx, "never seen "+user); err != nil {
			t.Fatal(err)
		}
	}
	id := sessiontest.NewID(t, "")
	bind(id, "first", true)
	bind(id, "second", false)
	if err := s.DestroyUser(ctx, "second"); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.records) != 0 || len(s.users) != 0 {
		t.Fatalf("%d records and %d users held after every user was logged out everywhere; want none", len(s.records), len(s.users))
	}
}
