package session_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestHijackKeepsToken: a handler that hijacks the connection without
// writing a response first (gorilla/websocket's Upgrade) writes its own
// response, without the headers set on the ResponseWriter: a token issued
// by a renewal saved then would never reach the browser, and the old one
// would end with the grace period, logging the user out. A Renew pending
// at Hijack is therefore not made (the next request may make it), and the
// other changes are saved under the token the browser has. A login
// (SetUser) cannot go without its renewal: Hijack fails, and the login is
// saved with the response the handler writes instead, which carries its
// cookie.
func TestHijackKeepsToken(t *testing.T) {
	store, clock := newMem(t)
	m := newManager(t, store, session.WithInsecureCookie())
	mux := http.NewServeMux()
	mux.Handle("/", app(t))
	mux.HandleFunc("/upgrade", func(w http.ResponseWriter, r *http.Request) {
		s := session.FromContext(r.Context())
		if err := s.Put("ws", "on"); err != nil {
			t.Error(err)
		}
		if r.URL.Query().Has("login") {
			if err := s.SetUser("alice"); err != nil {
				t.Error(err)
			}
		} else if err := s.Renew(); err != nil {
			t.Error(err)
		}
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			http.Error(w, "no upgrade: "+err.Error(), http.StatusConflict)
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
	got, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || string(got) != "hi" {
		t.Fatalf("hijacking handler: %d %q", res.StatusCode, got)
	}
	clock.Advance(2 * session.DefaultRenewGrace)
	if got := body(browser.do(t, "GET", "/get?k=ws")); got != "true:on" {
		t.Fatalf("after the grace period, the browser's token reads %q, want true:on", got)
	}

	req, _ = http.NewRequestWithContext(t.Context(), "GET", srv.URL+"/upgrade?login", nil)
	req.AddCookie(browser.cookie)
	res, err = srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusConflict {
		t.Fatalf("hijack after SetUser: %d, want the handler's 409", res.StatusCode)
	}
	var login *http.Cookie
	for _, c := range res.Cookies() {
		if c.Name == session.FallbackCookieName && c.MaxAge > 0 {
			login = &http.Cookie{Name: c.Name, Value: c.Value}
		}
	}
	if login == nil {
		t.Fatalf("the response of a refused hijack after SetUser carries no session cookie: %v", res.Cookies())
	}
	browser.cookie = login
	if got := body(browser.do(t, "GET", "/user")); got != "alice" {
		t.Fatalf("after the refused hijack, user %q, want alice", got)
	}
}
