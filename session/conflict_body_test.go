package session_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/activekit/activekit/session"
)

// conflictStore refuses every write with a conflict, as a store does when a
// concurrent request changed the session first.
type conflictStore struct{ session.Store }

func (conflictStore) Apply(context.Context, string, session.Delta) (uint64, error) {
	return 0, &session.ConflictError{Key: "k"}
}

// TestDefaultErrorBodies: the default error handler answers 503 with
// Retry-After both for a store failure and for a write a concurrent request
// beat, and its body tells them apart.
func TestDefaultErrorBodies(t *testing.T) {
	ms, _ := newMem(t)
	m := newManager(t, conflictStore{ms})
	w := (&client{h: m.Middleware(app(t))}).do(t, "GET", "/put?a=1")
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), "changed concurrently") {
		t.Errorf("conflict: %d, Retry-After %q, body %q", w.Code, w.Header().Get("Retry-After"), w.Body)
	}
	ms.fail.Store(true)
	w = (&client{h: newManager(t, ms).Middleware(app(t))}).do(t, "GET", "/put?a=1")
	if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "store unavailable") {
		t.Errorf("store down: %d, body %q", w.Code, w.Body)
	}
}
