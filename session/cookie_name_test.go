package session_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestDefaultCookieName: without a name set, the cookie is named
// "__Host-session" when browsers take it under that prefix (Secure, Path /,
// no Domain), and "session" otherwise; a name set is kept.
func TestDefaultCookieName(t *testing.T) {
	store, _ := newMem(t)
	cookie := func(cc session.CookieConfig) []session.Option {
		return []session.Option{session.WithCookie(cc)}
	}
	for name, tc := range map[string]struct {
		opts               []session.Option
		name, path, domain string
		secure             bool
	}{
		"defaults":     {nil, "__Host-session", "/", "", true},
		"empty config": {cookie(session.CookieConfig{}), "__Host-session", "/", "", true},
		"path /":       {cookie(session.CookieConfig{Path: "/"}), "__Host-session", "/", "", true},
		"other fields": {cookie(session.CookieConfig{BrowserSession: true, SameSite: http.SameSiteStrictMode}), "__Host-session", "/", "", true},
		"insecure":     {[]session.Option{session.WithInsecureCookie()}, "session", "/", "", false},
		"domain":       {cookie(session.CookieConfig{Domain: "example.com"}), "session", "/", "example.com", true},
		"path":         {cookie(session.CookieConfig{Path: "/app"}), "session", "/app", "", true},
		"named":        {cookie(session.CookieConfig{Name: "session"}), "session", "/", "", true},
		"named insecure": {
			[]session.Option{session.WithCookie(session.CookieConfig{Name: "sid"}), session.WithInsecureCookie()},
			"sid", "/", "", false,
		},
		"named domain": {cookie(session.CookieConfig{Name: "sid", Domain: "example.com"}), "sid", "/", "example.com", true},
	} {
		t.Run(name, func(t *testing.T) {
			h := newManager(t, store, tc.opts...).Middleware(app(t))
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest("GET", "/put?a=1", nil))
			cs := w.Result().Cookies()
			if len(cs) != 1 {
				t.Fatalf("cookies %v", cs)
			}
			if c := cs[0]; c.Name != tc.name || c.Path != tc.path || c.Domain != tc.domain || c.Secure != tc.secure {
				t.Errorf("cookie %s: name %q path %q domain %q secure %v; want %q %q %q %v",
					c.Raw, c.Name, c.Path, c.Domain, c.Secure, tc.name, tc.path, tc.domain, tc.secure)
			}
		})
	}
}

// TestOldDefaultCookieName: a request carrying a live token under the name
// that was the default before ("session") has no session, and gets no
// error: its read finds nothing and sets no cookie, and its write starts a
// new session under the default name, leaving the old one alone.
func TestOldDefaultCookieName(t *testing.T) {
	store, _ := newMem(t)
	old := &client{h: newManager(t, store, session.WithCookie(session.CookieConfig{Name: "session"})).Middleware(app(t))}
	old.do(t, "GET", "/put?a=secret")
	if old.cookie == nil || old.cookie.Name != "session" {
		t.Fatalf("cookie %v", old.cookie)
	}
	c := &client{h: newManager(t, store).Middleware(app(t)), cookie: old.cookie}
	if w := c.do(t, "GET", "/get?k=a"); w.Code != http.StatusOK || body(w) != "false:" || len(w.Result().Cookies()) != 0 {
		t.Fatalf("read with the old name: %d %q, cookies %v; want 200, no session, no cookie", w.Code, body(w), w.Result().Cookies())
	}
	w := c.do(t, "GET", "/put?b=1")
	if cs := w.Result().Cookies(); w.Code != http.StatusOK || len(cs) != 1 || cs[0].Name != session.DefaultCookieName || cs[0].MaxAge <= 0 {
		t.Fatalf("write with the old name: %d %q, cookies %v; want 200 and a new %s cookie", w.Code, body(w), cs, session.DefaultCookieName)
	}
	if got := body(c.do(t, "GET", "/get?k=a")); got != "false:" {
		t.Errorf("the new session holds the old one's value: %q", got)
	}
	if got := body(old.do(t, "GET", "/get?k=a")); got != "true:secret" {
		t.Errorf("the old session, under its own name: %q", got)
	}
}
