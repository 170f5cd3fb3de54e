package session_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestDestroyClientGone: a logout whose client went away before the
// response (the user clicked "log out" and closed the tab at once, the
// request's context cancelled) still ends the session: otherwise the
// cookie the browser keeps would still open it, on a shared computer too.
func TestDestroyClientGone(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	c := &client{h: m.Middleware(app(t))}
	c.do(t, "GET", "/put?a=1")
	ctx, cancel := context.WithCancel(t.Context())
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := session.FromContext(r.Context()).Destroy(); err != nil {
			t.Error(err)
		}
		cancel() // the client goes away
	}))
	r := httptest.NewRequestWithContext(ctx, "GET", "/logout", nil)
	r.AddCookie(c.cookie)
	h.ServeHTTP(httptest.NewRecorder(), r)
	if got := body(c.do(t, "GET", "/get?k=a")); got != "false:" {
		t.Fatalf("the session of a logout whose client went away still reads %q", got)
	}
}
