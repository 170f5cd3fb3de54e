package session_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestEarlyHintsDoNotSave: an informational response (103 Early Hints) is
// not the response's headers; a session changed after it is saved with the
// final response, and its cookie goes out there.
func TestEarlyHintsDoNotSave(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	mux := http.NewServeMux()
	mux.Handle("/", app(t))
	mux.HandleFunc("/hinted", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload; as=style")
		w.WriteHeader(http.StatusEarlyHints)
		if err := session.FromContext(r.Context()).Put("a", "1"); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		io.WriteString(w, "ok")
	})
	srv := httptest.NewServer(m.Middleware(mux))
	defer srv.Close()

	hints := 0
	ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(int, textproto.MIMEHeader) error { hints++; return nil },
	})
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/hinted", nil)
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if hints != 1 || res.StatusCode != http.StatusOK {
		t.Fatalf("got %d hints, status %d; want 1, 200", hints, res.StatusCode)
	}
	var cookie *http.Cookie
	for _, c := range res.Cookies() {
		if c.Name == session.DefaultCookieName {
			cookie = c
		}
	}
	if cookie == nil {
		t.Fatal("no session cookie in the final response of a handler that put a value after 103 Early Hints")
	}
	req, _ = http.NewRequestWithContext(t.Context(), "GET", srv.URL+"/get?k=a", nil)
	req.AddCookie(&http.Cookie{Name: cookie.Name, Value: cookie.Value})
	res, err = srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if string(got) != "true:1" {
		t.Fatalf("value put after 103 Early Hints: %q, want true:1", got)
	}
}
