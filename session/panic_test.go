package session_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestPanicDoesNotSave: a handler that panics before writing its response
// has not finished its work: its session changes are dropped (nothing is
// written to the store, no cookie is set), as a transaction that failed is
// rolled back, and the panic goes on up to whoever recovers it.
func TestPanicDoesNotSave(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := session.FromContext(r.Context()).Put("a", "1"); err != nil {
			t.Error(err)
		}
		panic("handler failed")
	}))
	w := httptest.NewRecorder()
	func() {
		defer func() {
			if recover() == nil {
				t.Error("the panic did not reach the outer handler")
			}
		}()
		h.ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
	}()
	if n := store.calls(); n != 0 {
		t.Errorf("%d store calls for a handler that panicked", n)
	}
	if cs := w.Result().Cookies(); len(cs) != 0 {
		t.Errorf("cookies %v", cs)
	}
}
