package session_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/activekit/activekit/session"
)

// nilValuesStore returns the records of an empty session with nil Values,
// which the Store contract allows.
type nilValuesStore struct{ *countingStore }

func (s nilValuesStore) Load(ctx context.Context, id string, idle time.Duration) (session.Record, bool, error) {
	rec, found, err := s.countingStore.Load(ctx, id, idle)
	if len(rec.Values) == 0 {
		rec.Values = nil
	}
	return rec, found, err
}

// TestUpdateOnNilValues: an Update of a session that holds no value, read
// from a store that gives its record nil Values, writes the value (it used
// to panic assigning to the nil map).
func TestUpdateOnNilValues(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, nilValuesStore{store})
	c := &client{h: m.Middleware(app(t))}
	c.do(t, "GET", "/login?u=alice") // a session without values
	if w := c.do(t, "GET", "/inc?k=n"); w.Code != http.StatusOK {
		t.Fatalf("inc: %d %q", w.Code, body(w))
	}
	if got := body(c.do(t, "GET", "/user")); got != "alice" {
		t.Fatalf("user %q", got)
	}
	n := 0
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _, _ = session.Get[int](session.FromContext(r.Context()), "n")
	}))
	(&client{h: h, cookie: c.cookie}).do(t, "GET", "/")
	if n != 1 {
		t.Fatalf("n = %d after one Update, want 1", n)
	}
}
