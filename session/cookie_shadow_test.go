package session_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestCookieShadowedByForeignValue: a request carrying, before this
// Manager's token, another cookie of the same name whose value is no token
// (another application on the parent domain that also names its cookie
// "session", a leftover of an older format) still reaches its session.
// Browsers send same-named cookies longest path first, then oldest first,
// so the foreign one comes first on every request: reading only the first
// made every request a new visitor's and a login never stuck.
func TestCookieShadowedByForeignValue(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store, session.WithCookie(session.CookieConfig{Domain: "app.example.com"}))
	c := &client{h: m.Middleware(app(t))}
	c.do(t, "GET", "/login?u=alice")
	if c.cookie == nil || c.cookie.Name != session.FallbackCookieName {
		t.Fatalf("cookie %v", c.cookie)
	}
	tok := c.cookie.Value
	for _, foreign := range []string{
		"s%3AJ0b6yWq1.abcdefghijklmnopqrstuvwxyz0123456789",    // express-session
		"MTcwMDAwMDAwMHxEdi1CQkFFQ180SUFBUkFCRUFBQUpQLUNBQUVH", // gorilla, too long
		"x",
	} {
		r := httptest.NewRequest("GET", "/user", nil)
		r.Header["Cookie"] = []string{"session=" + foreign + "; session=" + tok}
		w := httptest.NewRecorder()
		m.Middleware(app(t)).ServeHTTP(w, r)
		if w.Code != http.StatusOK || body(w) != "alice" {
			t.Errorf("foreign cookie %q first: %d %q, want 200 alice", foreign, w.Code, body(w))
		}
		if cs := w.Result().Cookies(); len(cs) != 0 {
			t.Errorf("foreign cookie %q first: cookies set %v", foreign, cs)
		}
	}
}

// TestCookieShadowedByDeadToken: a request carrying two tokens under the
// cookie's name, the first leading nowhere, reaches the session of the
// second: a token left under the old attributes after the cookie's Domain
// or Path changed (or one planted by a sibling subdomain) comes first in
// every request (same path, older), and used to make every request a new
// visitor's, its read clearing the live cookie, so that the user could not
// stay logged in. Reads, blind writes and a logout all reach the live one.
func TestCookieShadowedByDeadToken(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store, session.WithCookie(session.CookieConfig{Domain: "app.example.com"}))
	c := &client{h: m.Middleware(app(t))}
	c.do(t, "GET", "/put?a=1")
	live := c.cookie.Value
	dead := mustToken(t, "")
	do := func(path string) *httptest.ResponseRecorder {
		r := httptest.NewRequest("GET", path, nil)
		r.Header["Cookie"] = []string{"session=" + dead + "; session=" + live}
		w := httptest.NewRecorder()
		m.Middleware(app(t)).ServeHTTP(w, r)
		return w
	}
	if w := do("/get?k=a"); body(w) != "true:1" || len(w.Result().Cookies()) != 0 {
		t.Errorf("read: %q, cookies %v; want the live session's value and no cookie change", body(w), w.Result().Cookies())
	}
	if w := do("/put?b=2"); w.Code != http.StatusOK || len(w.Result().Cookies()) != 0 {
		t.Errorf("blind write: %d, cookies %v; want 200 and no new session", w.Code, w.Result().Cookies())
	}
	if got := body(c.do(t, "GET", "/get?k=b")); got != "true:2" {
		t.Errorf("the live session after the blind write: %q, want true:2", got)
	}
	if w := do("/logout"); len(w.Result().Cookies()) != 1 || w.Result().Cookies()[0].MaxAge >= 0 {
		t.Errorf("logout: cookies %v, want the cookie cleared", w.Result().Cookies())
	}
	if got := body(c.do(t, "GET", "/get?k=a")); got != "false:" {
		t.Errorf("the live session after logout: %q, want it ended", got)
	}
}

// TestCookieTokensBounded: a request carrying many dead tokens under the
// cookie's name costs at most four reads, and one token alone one read.
func TestCookieTokensBounded(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store, session.WithCookie(session.CookieConfig{Domain: "app.example.com"}))
	for _, n := range []int{1, 2, 4, 10} {
		var parts []string
		for range n {
			parts = append(parts, "session="+mustToken(t, ""))
		}
		r := httptest.NewRequest("GET", "/get?k=a", nil)
		r.Header["Cookie"] = []string{strings.Join(parts, "; ")}
		before := store.loads.Load()
		m.Middleware(app(t)).ServeHTTP(httptest.NewRecorder(), r)
		if got, want := store.loads.Load()-before, int64(min(n, 4)); got != want {
			t.Errorf("%d tokens: %d reads, want %d", n, got, want)
		}
	}
}

// TestDestroyClientGoneTwoTokens: TestDestroyClientGone with a dead token
// before the live one, which a logout reads to find: the read, too, is
// made when the client has gone away.
func TestDestroyClientGoneTwoTokens(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store, session.WithCookie(session.CookieConfig{Domain: "app.example.com"}))
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
	r.Header["Cookie"] = []string{"session=" + mustToken(t, "") + "; session=" + c.cookie.Value}
	h.ServeHTTP(httptest.NewRecorder(), r)
	if got := body(c.do(t, "GET", "/get?k=a")); got != "false:" {
		t.Fatalf("the session of a logout whose client went away still reads %q", got)
	}
}
