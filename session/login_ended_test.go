package session_test

import (
	"io"
	"net/http"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestLoginOnSessionEndedMeanwhile: a login (SetUser) whose session ended
// between the request's read and its save (logged out on another tab,
// revoked, expired) logs the user in on a new session, as a login without a
// session does; before, it answered 200 and left the browser logged out.
func TestLoginOnSessionEndedMeanwhile(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	mux := http.NewServeMux()
	mux.Handle("/", app(t))
	mux.HandleFunc("/slow-login", func(w http.ResponseWriter, r *http.Request) {
		s := session.FromContext(r.Context())
		if _, _, err := session.Get[string](s, "a"); err != nil { // e.g. a CSRF token
			t.Error(err)
		}
		// Meanwhile, another tab logs out.
		c, _ := r.Cookie(session.DefaultCookieName)
		if err := store.Delete(r.Context(), storeID(t, c.Value)); err != nil {
			t.Error(err)
		}
		if err := s.SetUser("bob"); err != nil {
			t.Error(err)
		}
		io.WriteString(w, "welcome")
	})
	browser := &client{h: m.Middleware(mux)}
	browser.do(t, "GET", "/put?a=1")
	if w := browser.do(t, "GET", "/slow-login"); w.Code != http.StatusOK {
		t.Fatalf("login: %d %s", w.Code, body(w))
	}
	if got := body(browser.do(t, "GET", "/user")); got != "bob" {
		t.Fatalf("after a login answered 200: user %q, want bob", got)
	}
}
