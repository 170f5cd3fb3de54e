package session_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/activekit/activekit/session"
)

// serveAsync serves a request with cookie on h in a goroutine and returns
// where its response arrives.
func serveAsync(h http.Handler, path string, cookie *http.Cookie) <-chan *httptest.ResponseRecorder {
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		r := httptest.NewRequest("GET", path, nil)
		if cookie != nil {
			r.AddCookie(cookie)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		done <- w
	}()
	return done
}

// TestUpdateRacingRenew: an Update that read a key before a concurrent
// renewal copied the session to a new ID (where the key's version starts
// again at 1) does not compare its stale version with the copy's: the store
// refuses a compare-and-set through the alias, and Update reads again
// through it and retries on the new ID. Before, a store that followed the
// alias could match the stale version (A-B-A) and lose an increment.
func TestUpdateRacingRenew(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			m := newManager(t, b.open(t)())
			mux := http.NewServeMux()
			mux.Handle("/", fleetApp(t, m))
			mux.HandleFunc("/zero", func(w http.ResponseWriter, r *http.Request) {
				if err := session.FromContext(r.Context()).Put("n", 0); err != nil {
					t.Error(err)
				}
			})
			c := &client{h: m.Middleware(mux)}
			c.do(t, "GET", "/zero") // created with n at version 1
			read, resume := make(chan struct{}), make(chan struct{})
			var calls atomic.Int32
			slow := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				err := session.Update(session.FromContext(r.Context()), "n", func(n int, _ bool) (int, error) {
					if calls.Add(1) == 1 {
						close(read)
						<-resume
					}
					return n + 1, nil
				})
				if err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
				}
			}))
			done := serveAsync(slow, "/", c.cookie)
			<-read                     // the slow Update read n = 0 at version 1
			c.do(t, "GET", "/inc?k=n") // n = 1 at version 2
			old := c.cookie
			c.do(t, "GET", "/renew") // the copy has n = 1 at version 1
			if c.cookie == nil || c.cookie.Value == old.Value {
				t.Fatalf("renew issued no new token: %v", c.cookie)
			}
			close(resume)
			if w := <-done; w.Code != http.StatusOK {
				t.Fatalf("the slow Update: %d %q", w.Code, body(w))
			}
			if n := readCounter(t, c.h, c.cookie); n != 2 {
				t.Fatalf("counter %d after two increments, one racing a renewal (fn called %d times)", n, calls.Load())
			}
		})
	}
}

// TestEncryptedPutRacingRenew: with encryption, a Put of a request that
// read the session before a concurrent renewal is sealed to the ID it lands
// in (the new one): the store refuses the write, which states the versions
// it read, through the alias, and the Manager reads again and reseals.
// Before, memstore and memcachedstore followed the alias and the value,
// sealed to the old ID, never decrypted again.
func TestEncryptedPutRacingRenew(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			m := newManager(t, b.open(t)(), session.WithEncryption(session.EncryptionKey{Name: "k", Secret: bytes.Repeat([]byte{1}, 32)}))
			c := &client{h: m.Middleware(app(t))}
			c.do(t, "GET", "/put?a=1")
			read, resume := make(chan struct{}), make(chan struct{})
			slow := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				s := session.FromContext(r.Context())
				if _, _, err := session.Get[string](s, "a"); err != nil {
					t.Error(err)
				}
				close(read)
				<-resume
				if err := s.Put("x", "late"); err != nil {
					t.Error(err)
				}
			}))
			done := serveAsync(slow, "/", c.cookie)
			<-read
			c.do(t, "GET", "/renew")
			close(resume)
			if w := <-done; w.Code != http.StatusOK {
				t.Fatalf("the slow request: %d %q", w.Code, body(w))
			}
			for k, want := range map[string]string{"a": "true:1", "x": "true:late"} {
				if w := c.do(t, "GET", "/get?k="+k); body(w) != want {
					t.Fatalf("%s under the new token: %d %q, want %q", k, w.Code, body(w), want)
				}
			}
		})
	}
}
