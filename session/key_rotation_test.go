package session_test

import (
	"bytes"
	"errors"
	"net/http"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestKeyRotationMixedFleet: during a rolling deployment, instances with
// the old and the new key list serve one user's requests. Putting the new
// key first in one step breaks the instances not yet upgraded (their Get
// and their renewal of a value sealed under the new key fail with
// ErrDecrypt); the three deployments WithEncryption describes (add the new
// key last, then put it first, then drop the old one) never do.
func TestKeyRotationMixedFleet(t *testing.T) {
	store, _ := newMem(t)
	oldK := session.EncryptionKey{Name: "2025", Secret: bytes.Repeat([]byte{1}, 32)}
	newK := session.EncryptionKey{Name: "2026", Secret: bytes.Repeat([]byte{2}, 32)}
	var err error
	handler := func(m *session.Manager) http.Handler {
		return m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s := session.FromContext(r.Context())
			switch r.URL.Path {
			case "/put":
				err = s.Put("a", r.URL.Query().Get("v"))
			case "/get":
				_, _, err = session.Get[string](s, "a")
			case "/login":
				err = s.SetUser("alice")
			}
		}))
	}
	// fleet serves each step on every instance in turn, checking each
	// instance reads what each other one wrote, and can log in.
	fleet := func(t *testing.T, keyLists ...[]session.EncryptionKey) error {
		var hs []http.Handler
		for _, keys := range keyLists {
			hs = append(hs, handler(newManager(t, store, session.WithEncryption(keys...))))
		}
		for _, writer := range hs {
			c := &client{h: writer}
			if w := c.do(t, "GET", "/put?v=x"); w.Code != http.StatusOK || err != nil {
				t.Fatalf("put: %d %v", w.Code, err)
			}
			for _, reader := range hs {
				c.h = reader
				c.do(t, "GET", "/get")
				if err != nil {
					return err
				}
			}
			for _, renewer := range hs {
				c.h = renewer
				if w := c.do(t, "GET", "/login"); w.Code != http.StatusOK {
					return errors.Join(err, errors.New(w.Body.String()))
				}
			}
		}
		return nil
	}
	t.Run("one step", func(t *testing.T) {
		if err := fleet(t, []session.EncryptionKey{oldK}, []session.EncryptionKey{newK, oldK}); !errors.Is(err, session.ErrDecrypt) {
			t.Errorf("old and new-first instances together: %v, want ErrDecrypt (what the doc warns of)", err)
		}
	})
	t.Run("three steps", func(t *testing.T) {
		for i, step := range [][2][]session.EncryptionKey{
			{{oldK}, {oldK, newK}},
			{{oldK, newK}, {newK, oldK}},
			{{newK, oldK}, {newK}}, // values written now: the old ones have expired
		} {
			if err := fleet(t, step[0], step[1]); err != nil {
				t.Errorf("deployment %d: %v", i+1, err)
			}
		}
	})
}
