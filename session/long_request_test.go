package session_test

import (
	"io"
	"net/http"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestLongRequestOutlivesRenewal: a request that read the session, then
// outlived the grace period of a renewal made meanwhile (a long poll, an
// upload, while the user logs in on another tab), cannot save its changes
// (the old token leads nowhere any more), but must not clear the cookie:
// cookies go by name, so clearing it would delete the renewed token the
// browser holds by then and log the user out.
func TestLongRequestOutlivesRenewal(t *testing.T) {
	// The long request writes, renews too, or only deletes a key without
	// reading the session (a blind write, whose store answers not found).
	for _, renew := range []string{"/put?b=1", "/renew", "blind delete"} {
		t.Run(renew, func(t *testing.T) {
			store, clock := newMem(t)
			m := newManager(t, store)
			loaded, proceed := make(chan struct{}), make(chan struct{})
			mux := http.NewServeMux()
			mux.Handle("/", app(t))
			mux.HandleFunc("/long", func(w http.ResponseWriter, r *http.Request) {
				s := session.FromContext(r.Context())
				if renew == "blind delete" {
					close(loaded)
					<-proceed
					if err := s.Delete("a"); err != nil {
						t.Error(err)
					}
					io.WriteString(w, "ok")
					return
				}
				if _, _, err := session.Get[string](s, "a"); err != nil {
					t.Error(err)
				}
				close(loaded)
				<-proceed
				if err := s.Put("b", "1"); err != nil {
					t.Error(err)
				}
				if renew == "/renew" {
					if err := s.Renew(); err != nil {
						t.Error(err)
					}
				}
				io.WriteString(w, "ok")
			})
			h := m.Middleware(mux)
			browser := &client{h: h}
			browser.do(t, "GET", "/put?a=1")
			done := serveAsync(h, "/long", browser.cookie)
			<-loaded
			browser.do(t, "GET", "/login?u=alice") // another tab
			clock.Advance(session.DefaultRenewGrace)
			close(proceed)
			w := <-done
			for _, c := range w.Result().Cookies() {
				if c.Name == session.DefaultCookieName && c.MaxAge < 0 {
					t.Errorf("the long request's response clears the cookie (status %d): the browser loses its renewed token", w.Code)
				}
			}
			if got := body(browser.do(t, "GET", "/user")); got != "alice" {
				t.Errorf("renewed token: user %q, want alice", got)
			}
		})
	}
}
