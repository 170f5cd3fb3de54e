package session_test

import (
	"io"
	"net/http"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestErrorResponseDropsHandlerHeaders: when the save fails, the error
// handler's answer replaces the handler's response, so it must not carry
// the headers that described that response: a Content-Encoding the
// handler's own compressing writer set would make the client decode the
// plain error body as gzip, and a Cache-Control or validator would let a
// cache keep the error as if it were the page. Headers that do not
// describe the response (set by outer middleware) stay.
func TestErrorResponseDropsHandlerHeaders(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = session.FromContext(r.Context()).Put("a", "1") // fails with the store down
		hd := w.Header()
		hd.Set("Content-Encoding", "gzip")
		hd.Set("Cache-Control", "public, max-age=3600")
		hd.Set("Expires", "Thu, 01 Jan 2099 00:00:00 GMT")
		hd.Set("ETag", `"v1"`)
		hd.Set("Last-Modified", "Mon, 02 Jan 2006 15:04:05 GMT")
		hd.Set("Content-Disposition", "attachment")
		hd.Set("Location", "/next")
		hd.Set("X-Request-Id", "r1")
		w.WriteHeader(http.StatusFound)
		io.WriteString(w, "\x1f\x8b")
	}))
	store.fail.Store(true)
	c := &client{h: h, cookie: &http.Cookie{Name: session.DefaultCookieName, Value: mustToken(t, "")}}
	w := c.do(t, "GET", "/")
	if w.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503", w.Code)
	}
	for _, k := range []string{"Content-Encoding", "Expires", "ETag", "Last-Modified", "Content-Disposition", "Location"} {
		if v := w.Header().Get(k); v != "" {
			t.Errorf("the error response carries the handler's %s: %q", k, v)
		}
	}
	if v := w.Header().Get("Cache-Control"); v != "" {
		t.Errorf("the error response carries Cache-Control %q", v)
	}
	if v := w.Header().Get("X-Request-Id"); v != "r1" {
		t.Errorf("X-Request-Id %q, want it kept", v)
	}
}
