package session_test

import (
	"errors"
	"net/http"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestPutAfterDestroy: a logout that then puts a value (a "you have been
// logged out" message for the next page) ends the session and starts a new
// one holding that value, with its cookie, instead of dropping the value in
// silence; what was put or bound before Destroy is not carried over.
func TestPutAfterDestroy(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	mux := http.NewServeMux()
	mux.Handle("/", app(t))
	mux.HandleFunc("/logout-flash", func(w http.ResponseWriter, r *http.Request) {
		s := session.FromContext(r.Context())
		for _, err := range []error{s.Put("before", "x"), s.SetUser("bob"), s.Destroy(), s.Put("flash", "bye")} {
			if err != nil {
				t.Error(err)
			}
		}
		// The request reads what the next one will.
		a, ok, err := session.Get[string](s, "a")
		keys, kerr := s.Keys()
		user, uerr := s.User()
		if err != nil || kerr != nil || uerr != nil || ok || len(keys) != 1 || keys[0] != "flash" || user != "" {
			t.Errorf("after Destroy: a = %q %v %v; keys %v %v; user %q %v", a, ok, err, keys, kerr, user, uerr)
		}
	})
	c := &client{h: m.Middleware(mux)}
	c.do(t, "GET", "/login?u=alice")
	c.do(t, "GET", "/put?a=1")
	old := c.cookie
	w := c.do(t, "GET", "/logout-flash")
	if cs := w.Result().Cookies(); len(cs) != 1 || cs[0].MaxAge <= 0 || cs[0].Value == old.Value {
		t.Fatalf("cookies %v, want a new session's", cs)
	}
	if got := body((&client{h: c.h, cookie: old}).do(t, "GET", "/get?k=a")); got != "false:" {
		t.Errorf("the destroyed session still reads %q", got)
	}
	for k, want := range map[string]string{"flash": "true:bye", "a": "false:", "before": "false:"} {
		if got := body(c.do(t, "GET", "/get?k="+k)); got != want {
			t.Errorf("new session: %s = %q, want %q", k, got, want)
		}
	}
	if got := body(c.do(t, "GET", "/user")); got != "" {
		t.Errorf("new session bound to %q, want no user", got)
	}
}

// TestUpdateAfterDestroy: Update writes to the store at once, and after
// Destroy the only session it could write to is the one being destroyed:
// it fails with ErrNotFound, changing nothing, instead of reporting success
// for a value the save then deletes.
func TestUpdateAfterDestroy(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	mux := http.NewServeMux()
	mux.Handle("/", app(t))
	mux.HandleFunc("/logout-inc", func(w http.ResponseWriter, r *http.Request) {
		s := session.FromContext(r.Context())
		if err := s.Destroy(); err != nil {
			t.Error(err)
		}
		if err := inc(s); !errors.Is(err, session.ErrNotFound) {
			t.Errorf("Update after Destroy: %v, want ErrNotFound", err)
		}
	})
	c := &client{h: m.Middleware(mux)}
	c.do(t, "GET", "/put?a=1")
	applies := store.applies.Load()
	c.do(t, "GET", "/logout-inc")
	if n := store.applies.Load() - applies; n != 0 {
		t.Errorf("%d applies for an Update after Destroy", n)
	}
}
