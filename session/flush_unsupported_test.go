package session_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/activekit/activekit/session"
)

// TestFlushUnsupportedKeepsSession: behind a writer that cannot flush
// (http.TimeoutHandler's), a Flush fails with http.ErrNotSupported without
// saving the session: a handler that then answers without streaming can
// still change it. The failed Flush saved it first, and every later Put
// failed with ErrSaved.
func TestFlushUnsupportedKeepsSession(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	var flushErr, putErr error
	h := http.TimeoutHandler(m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		flushErr = http.NewResponseController(w).Flush()
		putErr = session.FromContext(r.Context()).Put("a", "1")
		_, _ = w.Write([]byte("buffered"))
	})), time.Minute, "timeout")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
	if !errors.Is(flushErr, http.ErrNotSupported) {
		t.Errorf("Flush behind TimeoutHandler: %v, want http.ErrNotSupported", flushErr)
	}
	if putErr != nil {
		t.Errorf("Put after the failed Flush: %v", putErr)
	}
	if cs := w.Result().Cookies(); len(cs) != 1 || cs[0].MaxAge <= 0 {
		t.Errorf("cookies %v, want the new session's", cs)
	}
}
