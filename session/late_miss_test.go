package session_test

import (
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/activekit/activekit/session"
)

// TestLateMissKeepsCookie: a request sent with the token a renewal on
// another tab replaced (a long poll, an upload, started before the login),
// that first finds its token leading nowhere after the grace period (the
// alias ended), cannot tell it from a session that expired, but must not
// touch the cookie: by then the browser holds the renewed token, which any
// Set-Cookie of this response would replace (a new anonymous session) or
// clear, logging the user out. Its changes are dropped, as for a session
// that ended after it was read (TestLongRequestOutlivesRenewal). An Update
// answers ErrNotFound (as when the session ends while it retries). A
// request whose token had ended when it came still gets a new session.
func TestLateMissKeepsCookie(t *testing.T) {
	for _, tc := range []struct {
		name    string
		blind   bool // the store enforces the size limit: Put skips the read
		op      func(s *session.Session) error
		lateErr error // what op returns in the long request
	}{
		{"blind put", true, func(s *session.Session) error { return s.Put("b", "1") }, nil},
		{"put", false, func(s *session.Session) error { return s.Put("b", "1") }, nil},
		{"get", false, func(s *session.Session) error { _, _, err := session.Get[string](s, "a"); return err }, nil},
		{"renew", false, func(s *session.Session) error { return s.Renew() }, nil},
		{"update", false, func(s *session.Session) error {
			return session.Update(s, "n", func(n int, _ bool) (int, error) { return n + 1, nil })
		}, session.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store, clock := newMem(t)
			store.sizes = tc.blind
			m := newManager(t, store, session.WithClock(clock.Now))
			started, proceed := make(chan struct{}), make(chan struct{})
			mux := http.NewServeMux()
			mux.Handle("/", app(t))
			mux.HandleFunc("/long", func(w http.ResponseWriter, r *http.Request) {
				close(started)
				<-proceed
				if err := tc.op(session.FromContext(r.Context())); !errors.Is(err, tc.lateErr) {
					t.Errorf("in the long request: %v, want %v", err, tc.lateErr)
				}
				io.WriteString(w, "ok")
			})
			h := m.Middleware(mux)
			browser := &client{h: h}
			browser.do(t, "GET", "/put?a=1")
			old := browser.cookie.Value
			done := serveAsync(h, "/long", browser.cookie)
			<-started
			browser.do(t, "GET", "/login?u=alice") // another tab
			clock.Advance(session.DefaultRenewGrace)
			close(proceed)
			w := <-done
			if w.Code != http.StatusOK {
				t.Errorf("long request: %d %q", w.Code, body(w))
			}
			if cs := w.Result().Cookies(); len(cs) != 0 {
				t.Errorf("the long request's response sets %v: the browser loses its renewed token", cs)
			}
			if got := body(browser.do(t, "GET", "/user")); got != "alice" {
				t.Errorf("renewed token: user %q, want alice", got)
			}
			// A request that came with the ended token finds it so at
			// once: it answers as for a new visitor, with a new session
			// (or, for a read, clearing the stale cookie).
			h = m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if err := tc.op(session.FromContext(r.Context())); err != nil {
					t.Error(err)
				}
			}))
			stale := &client{h: h, cookie: &http.Cookie{Name: session.DefaultCookieName, Value: old}}
			if w := stale.do(t, "GET", "/"); w.Code != http.StatusOK || len(w.Result().Cookies()) != 1 {
				t.Errorf("a request with a token ended when it came: %d, cookies %v; want 200 and one", w.Code, w.Result().Cookies())
			}
		})
	}
}

// TestLateMissShortGrace: with a grace period too short for requests in
// flight, an ordinary request whose token had ended when it came still
// answers as a new visitor's: its write starts a new session.
func TestLateMissShortGrace(t *testing.T) {
	store, clock := newMem(t)
	store.sizes = true
	m := newManager(t, store, session.WithClock(clock.Now), session.WithRenewGrace(time.Nanosecond))
	c := &client{h: m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		clock.Advance(100 * time.Millisecond) // the handler's work
		if err := session.FromContext(r.Context()).Put("a", "1"); err != nil {
			t.Error(err)
		}
	})), cookie: &http.Cookie{Name: session.DefaultCookieName, Value: mustToken(t, "")}}
	old := c.cookie.Value
	if w := c.do(t, "GET", "/"); w.Code != http.StatusOK || c.cookie == nil || c.cookie.Value == old {
		t.Fatalf("a write with an unknown token: %d, cookies %v; want a new session", w.Code, w.Result().Cookies())
	}
}
