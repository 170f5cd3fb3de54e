package session_test

import (
	"io"
	"net/http"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestDestroyAfterFailedRead: a logout whose handler read the session while
// the store failed still deletes the session (or fails); it must not answer
// as if the session were gone while it lives on in the store.
func TestDestroyAfterFailedRead(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	mux := http.NewServeMux()
	mux.Handle("/", app(t))
	mux.HandleFunc("/careful-logout", func(w http.ResponseWriter, r *http.Request) {
		s := session.FromContext(r.Context())
		store.fail.Store(true)
		_, _, err := session.Get[string](s, "a") // who is logging out? the store fails
		store.fail.Store(false)
		if err == nil {
			t.Error("Get with the store down: no error")
		}
		if err := s.Destroy(); err != nil {
			t.Error(err)
		}
		io.WriteString(w, "bye")
	})
	c := &client{h: m.Middleware(mux)}
	c.do(t, "GET", "/put?a=1")
	token := c.cookie.Value
	w := c.do(t, "GET", "/careful-logout")
	rec, found, err := store.Load(t.Context(), storeID(t, token), 0)
	if err != nil {
		t.Fatal(err)
	}
	if found {
		t.Fatalf("logout answered %d %q, and the session lives on: %+v", w.Code, body(w), rec.Values)
	}
}
