package session_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestHijackUnsupportedKeepsRenewal: over HTTP/2, where a connection cannot
// be hijacked, a Hijack fails without touching the session: a Renew
// pending then is still made, with the response the handler writes
// instead (its cookie carries the new token). Hijack dropped the renewal
// and saved the session first, so the response went out without it.
func TestHijackUnsupportedKeepsRenewal(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	var hijackErr error
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := session.FromContext(r.Context())
		switch r.URL.Path {
		case "/put":
			_ = s.Put("a", "1")
		case "/upgrade":
			if err := s.Renew(); err != nil {
				t.Error(err)
			}
			_, _, hijackErr = http.NewResponseController(w).Hijack()
			http.Error(w, "no upgrade", http.StatusHTTPVersionNotSupported)
		}
	}))
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	do := func(path string, cookie *http.Cookie) *http.Response {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", srv.URL+path, nil)
		if cookie != nil {
			req.AddCookie(cookie)
		}
		res, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.ProtoMajor != 2 {
			t.Fatalf("%s over %s, want HTTP/2", path, res.Proto)
		}
		return res
	}
	cs := do("/put", nil).Cookies()
	if len(cs) != 1 {
		t.Fatalf("cookies %v", cs)
	}
	res := do("/upgrade", cs[0])
	if !errors.Is(hijackErr, http.ErrNotSupported) {
		t.Errorf("Hijack over HTTP/2: %v, want http.ErrNotSupported", hijackErr)
	}
	if got := res.Cookies(); len(got) != 1 || got[0].Value == cs[0].Value || got[0].MaxAge <= 0 {
		t.Errorf("response after a failed Hijack: cookies %v, want the renewed token", got)
	}
}
