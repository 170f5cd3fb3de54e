package session_test

import (
	"net/http"
	"net/http/httptest"
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
