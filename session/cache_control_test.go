package session_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestSetCookieKeepsCacheControl: issuing a cookie adds its cache
// directive to the handler's Cache-Control instead of replacing it: a
// response the handler marked no-store (a page of user data) must stay so.
func TestSetCookieKeepsCacheControl(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if err := session.FromContext(r.Context()).Put("a", "1"); err != nil {
			t.Error(err)
		}
		io.WriteString(w, "account details")
	}))
	w := (&client{h: h}).do(t, "GET", "/")
	if len(w.Result().Cookies()) != 1 {
		t.Fatalf("cookies %v, want the new session's", w.Result().Cookies())
	}
	if cc := strings.Join(w.Header().Values("Cache-Control"), ", "); !strings.Contains(cc, "no-store") {
		t.Fatalf("Cache-Control %q: the handler's no-store was dropped", cc)
	}
}
