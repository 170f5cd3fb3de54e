package session_test

import (
	"bufio"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestHijack: a handler behind the Middleware can hijack the connection
// the way websocket libraries do (a type assertion to http.Hijacker), and
// the session is saved before the connection is handed over.
func TestHijack(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store, session.WithInsecureCookie())
	mux := http.NewServeMux()
	mux.Handle("/", app(t))
	mux.HandleFunc("/upgrade", func(w http.ResponseWriter, r *http.Request) {
		_ = session.FromContext(r.Context()).Put("ws", "on") // fails with the store down
		hj, ok := w.(http.Hijacker)
		if !ok {
			http.Error(w, "response does not implement http.Hijacker", http.StatusInternalServerError)
			return
		}
		conn, buf, err := hj.Hijack()
		if err != nil {
			if !errors.Is(err, session.ErrSaveFailed) {
				t.Error(err)
			}
			return
		}
		defer conn.Close()
		buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
		buf.Flush()
	})
	srv := httptest.NewServer(m.Middleware(mux))
	defer srv.Close()
	browser := &client{h: m.Middleware(mux)}
	browser.do(t, "GET", "/put?a=1")

	req, _ := http.NewRequestWithContext(t.Context(), "GET", srv.URL+"/upgrade", nil)
	req.AddCookie(browser.cookie)
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(bufio.NewReader(res.Body))
	res.Body.Close()
	if res.StatusCode != http.StatusOK || string(got) != "hi" {
		t.Fatalf("hijacking handler: %d %q", res.StatusCode, got)
	}
	if got := body(browser.do(t, "GET", "/get?k=ws")); got != "true:on" {
		t.Fatalf("value put before the hijack: %q, want true:on", got)
	}

	// A save that fails answers with the error handler; the connection is
	// not handed over.
	store.fail.Store(true)
	defer store.fail.Store(false)
	req, _ = http.NewRequestWithContext(t.Context(), "GET", srv.URL+"/upgrade", nil)
	req.AddCookie(browser.cookie)
	res, err = srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("hijack with the store down: %d, want 503", res.StatusCode)
	}
}
