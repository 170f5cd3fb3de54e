package session_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestSetCookieKeepsCacheControl: issuing a cookie adds its cache
// directive to the handler's Cache-Control instead of replacing it: a
// response the handler marked no-store (a page of user data) must stay so.
func TestSetCookieKeepsCacheControl(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if err := session.FromContext(r.Context()).Put("a", "1"); err != nil {
			t.Error(err)
		}
		io.WriteString(w, "account details")
	}))
	w := (&client{h: h}).do(t, "GET", "/")
	if len(w.Result().Cookies()) != 1 {
		t.Fatalf("cookies %v, want the new session's", w.Result().Cookies())
	}
	if cc := strings.Join(w.Header().Values("Cache-Control"), ", "); !strings.Contains(cc, "no-store") {
		t.Fatalf("Cache-Control %q: the handler's no-store was dropped", cc)
	}
}

// TestClearCookieCacheControl: a response that clears the cookie (a
// logout, a stale token read on a page the handler lets caches keep) says
// no-cache="Set-Cookie" too, as one that sets it does: a shared cache that
// kept the clearing Set-Cookie and served it to other users would log
// them out.
func TestClearCookieCacheControl(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	mux := http.NewServeMux()
	mux.Handle("/", app(t))
	mux.HandleFunc("/page", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=60")
		if _, err := session.FromContext(r.Context()).User(); err != nil {
			t.Error(err)
		}
		io.WriteString(w, "home")
	})
	for _, tc := range []struct{ name, path, token string }{
		{"logout", "/logout", ""},
		{"stale token", "/page", mustToken(t, "")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &client{h: m.Middleware(mux)}
			if tc.token == "" {
				c.do(t, "GET", "/put?a=1")
			} else {
				c.cookie = &http.Cookie{Name: session.DefaultCookieName, Value: tc.token}
			}
			w := c.do(t, "GET", tc.path)
			if cs := w.Result().Cookies(); len(cs) != 1 || cs[0].MaxAge >= 0 {
				t.Fatalf("cookies %v, want the session's cleared", cs)
			}
			if cc := strings.Join(w.Header().Values("Cache-Control"), ", "); !strings.Contains(cc, `no-cache="Set-Cookie"`) {
				t.Errorf(`Cache-Control %q: no no-cache="Set-Cookie" on a response clearing the cookie`, cc)
			}
		})
	}
}
