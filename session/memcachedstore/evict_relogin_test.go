package memcachedstore_test

import (
	"testing"

	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/sessiontest"
)

// TestEvictedUserItemStaysRevokedAfterLogin: once the user item is evicted
// (sessions bound before count as revoked), a new login makes a new user
// item; the sessions revoked by the eviction must not come back with it.
func TestEvictedUserItemStaysRevokedAfterLogin(t *testing.T) {
	c := newClient(t)
	p := prefix(t)
	s := newStore(t, c, p)
	user := "dave@example.com"
	old := sessiontest.NewID(t, user)
	create(t, s, old, session.Delta{User: user})
	if err := c.Delete(p + "u:" + session.UserTag(user)); err != nil { // evicted
		t.Fatal(err)
	}
	if found(t, s, old) {
		t.Fatal("bound session found after its user item was evicted")
	}
	fresh := sessiontest.NewID(t, user)
	create(t, s, fresh, session.Delta{User: user}) // the user logs in again
	if !found(t, s, fresh) {
		t.Fatal("new session not found")
	}
	if found(t, s, old) {
		t.Fatal("a session revoked by the eviction of its user item came back when the user logged in again")
	}
}
