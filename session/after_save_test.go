package session_test

import (
	"errors"
	"io"
	"net/http"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestChangeAfterSave: the session is saved once, before the response
// headers go out; a change made after that (a streaming handler that logs
// in once it has written, a goroutine that puts a value late) cannot be
// saved, and says so with ErrSaved instead of being dropped in silence. An
// Update of a session that exists writes to the store at once and still
// works; one that would start a new session, whose cookie could not be
// sent, fails likewise.
func TestChangeAfterSave(t *testing.T) {
	for _, tc := range []struct {
		name    string
		visitor bool // a new visitor, without a session
		op      func(s *session.Session) error
		want    error
	}{
		{"put", false, func(s *session.Session) error { return s.Put("b", "1") }, session.ErrSaved},
		{"delete", false, func(s *session.Session) error { return s.Delete("a") }, session.ErrSaved},
		{"renew", false, func(s *session.Session) error { return s.Renew() }, session.ErrSaved},
		{"set user", false, func(s *session.Session) error { return s.SetUser("alice") }, session.ErrSaved},
		{"destroy", false, func(s *session.Session) error { return s.Destroy() }, session.ErrSaved},
		{"update", false, inc, nil},
		{"new visitor's update", true, inc, session.ErrSaved},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store, _ := newMem(t)
			m := newManager(t, store)
			mux := http.NewServeMux()
			mux.Handle("/", app(t))
			mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "first")
				if err := tc.op(session.FromContext(r.Context())); !errors.Is(err, tc.want) {
					t.Errorf("after the headers: %v, want %v", err, tc.want)
				}
			})
			browser := &client{h: m.Middleware(mux)}
			if !tc.visitor {
				browser.do(t, "GET", "/put?a=1")
			}
			before := store.calls()
			w := browser.do(t, "GET", "/stream")
			if cs := w.Result().Cookies(); len(cs) != 0 {
				t.Errorf("cookies %v", cs)
			}
			if tc.want != nil && store.calls() != before {
				t.Errorf("%d store calls for a refused change", store.calls()-before)
			}
		})
	}
}

func inc(s *session.Session) error {
	return session.Update(s, "n", func(n int, _ bool) (int, error) { return n + 1, nil })
}
