package session_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/memstore"
)

// BenchmarkMiddleware is the CPU activekit's own code costs per request,
// with no network: the Manager's middleware over memstore, whose Load and
// Apply are a map access under a mutex, serving the bench module's read
// (one Get) and write (one blind Put) handlers, called directly with a
// recorder. "bare" is the same handler reading and writing a map under a
// mutex by the raw cookie value: what the Manager adds is the difference.
func BenchmarkMiddleware(b *testing.B) {
	store, err := memstore.New()
	if err != nil {
		b.Fatal(err)
	}
	m, err := session.NewManager(store, session.WithIdleTimeout(30*time.Minute),
		session.WithAbsoluteTimeout(24*time.Hour), session.WithInsecureCookie())
	if err != nil {
		b.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/seed", func(w http.ResponseWriter, r *http.Request) {
		s := session.FromContext(r.Context())
		if err := s.Put("user", "alice"); err != nil {
			b.Error(err)
		}
	})
	mux.HandleFunc("/read", func(w http.ResponseWriter, r *http.Request) {
		user, _, err := session.Get[string](session.FromContext(r.Context()), "user")
		if err != nil {
			b.Error(err)
			return
		}
		io.WriteString(w, user)
	})
	mux.HandleFunc("/write", func(w http.ResponseWriter, r *http.Request) {
		if err := session.FromContext(r.Context()).Put("last", time.Now().UnixNano()); err != nil {
			b.Error(err)
		}
		io.WriteString(w, "ok")
	})
	h := m.Middleware(mux)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/seed", nil))
	cookies := rec.Result().Cookies()
	if len(cookies) != 1 {
		b.Fatalf("seed set %d cookies", len(cookies))
	}
	ck := cookies[0]

	var mu sync.Mutex
	bare := map[string]string{ck.Value: "alice"}
	bareMux := http.NewServeMux()
	bareMux.HandleFunc("/read", func(w http.ResponseWriter, r *http.Request) {
		c, err := r.Cookie(ck.Name)
		if err != nil {
			b.Error(err)
			return
		}
		mu.Lock()
		u := bare[c.Value]
		mu.Unlock()
		io.WriteString(w, u)
	})
	bareMux.HandleFunc("/write", func(w http.ResponseWriter, r *http.Request) {
		c, err := r.Cookie(ck.Name)
		if err != nil {
			b.Error(err)
			return
		}
		mu.Lock()
		bare[c.Value+":last"] = time.Now().String()
		mu.Unlock()
		io.WriteString(w, "ok")
	})

	for _, c := range []struct {
		name string
		h    http.Handler
	}{{"activekit", h}, {"bare", bareMux}} {
		for _, path := range []string{"/read", "/write"} {
			b.Run(c.name+path, func(b *testing.B) {
				req := httptest.NewRequest("GET", path, nil)
				req.AddCookie(ck)
				b.ReportAllocs()
				for b.Loop() {
					w := httptest.NewRecorder()
					c.h.ServeHTTP(w, req)
					if w.Code != http.StatusOK {
						b.Fatalf("status %d", w.Code)
					}
				}
			})
		}
	}
}
