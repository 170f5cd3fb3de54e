package session_test

import (
	"net/http"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestLateDestroy: a long request that destroys its session (a logout
// behind a slow page), while a login on another tab renews the session and
// the grace period of the old token ends, destroys what its token still
// leads to and nothing more: it must not clear the cookie, which by then
// holds the login's token (a Set-Cookie clearing a cookie goes by name,
// whatever its value: it cannot be made conditional). A long logout whose
// session is still there destroys it and clears the cookie, as any logout.
func TestLateDestroy(t *testing.T) {
	for _, tc := range []struct {
		name  string
		read  bool // the long request reads the session before the login
		login bool // another tab logs in while the long request runs
	}{
		{"unread, login elsewhere", false, true},
		{"read, login elsewhere", true, true},
		{"unread, no login", false, false},
		{"read, no login", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store, clock := newMem(t)
			m := newManager(t, store, session.WithClock(clock.Now))
			started, proceed := make(chan struct{}), make(chan struct{})
			mux := http.NewServeMux()
			mux.Handle("/", app(t))
			mux.HandleFunc("/long", func(w http.ResponseWriter, r *http.Request) {
				s := session.FromContext(r.Context())
				if tc.read {
					if _, _, err := session.Get[string](s, "a"); err != nil {
						t.Error(err)
					}
				}
				close(started)
				<-proceed
				if err := s.Destroy(); err != nil {
					t.Error(err)
				}
			})
			h := m.Middleware(mux)
			browser := &client{h: h}
			browser.do(t, "GET", "/put?a=1")
			old := browser.cookie
			done := serveAsync(h, "/long", old)
			<-started
			if tc.login {
				browser.do(t, "GET", "/login?u=alice") // another tab
			}
			clock.Advance(session.DefaultRenewGrace)
			close(proceed)
			w := <-done
			if w.Code != http.StatusOK {
				t.Fatalf("long logout: %d %q", w.Code, body(w))
			}
			cleared := false
			for _, c := range w.Result().Cookies() {
				cleared = cleared || c.Name == session.DefaultCookieName && c.MaxAge < 0
			}
			if tc.login {
				if cleared {
					t.Error("the long logout clears the cookie: the browser loses the login's token")
				}
				if got := body(browser.do(t, "GET", "/user")); got != "alice" {
					t.Errorf("login's token: user %q, want alice", got)
				}
				return
			}
			if !cleared {
				t.Errorf("a long logout of a live session leaves the cookie: %v", w.Result().Cookies())
			}
			stale := &client{h: h, cookie: old}
			if got := body(stale.do(t, "GET", "/get?k=a")); got != "false:" {
				t.Errorf("the destroyed session still reads %q", got)
			}
		})
	}
}
