package discovery

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"
)

// TestTLSCloneKeepsHTTP2: a base that speaks HTTP/2 by default (no TLS
// config of its own) still does through its clone for https. The clone
// copies the TLS config that base's HTTP/2 set-up filled in (offering h2
// by ALPN), which net/http takes for a custom one on which it does not set
// up HTTP/2: the server then chooses h2 and the clone speaks HTTP/1.1 to it
// (EOF).
func TestTLSCloneKeepsHTTP2(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Proto)
	}))
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	defer srv.Close()

	for _, tc := range []struct {
		name string
		base *http.Transport
		want int
	}{
		{"default", &http.Transport{}, 2},
		{"http/1.1 only", &http.Transport{TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tlsClone(tc.base, "example.com", nil) // httptest's certificate names example.com
			defer c.CloseIdleConnections()
			if c.TLSClientConfig.ServerName != "example.com" {
				t.Fatalf("ServerName %q, want example.com", c.TLSClientConfig.ServerName)
			}
			pool := x509.NewCertPool()
			pool.AddCert(srv.Certificate())
			c.TLSClientConfig.RootCAs = pool
			req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
			resp, err := c.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.ProtoMajor != tc.want {
				t.Fatalf("spoke %s, want HTTP/%d", resp.Proto, tc.want)
			}
		})
	}
}

// TestTrackDialTLSForgetsCollectedConns: the *tls.Conn that a base's own
// TLS dialer returns are tracked unwrapped, so their Close cannot untrack
// them; an entry must still go once net/http has dropped its conn, or a
// long-lived service's map grows with every connection it ever made.
func TestTrackDialTLSForgetsCollectedConns(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	d := &tls.Dialer{Config: &tls.Config{RootCAs: pool, ServerName: "example.com"}}
	s := &service{name: "example"}
	c := &http.Transport{DialTLSContext: s.trackDialTLS(d.DialContext), DisableKeepAlives: true}
	defer c.CloseIdleConnections()
	const n = 20
	for range n {
		req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
		resp, err := c.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.TLS == nil {
			t.Fatal("resp.TLS is nil: the *tls.Conn was hidden from net/http")
		}
	}
	tracked := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.tlsConns)
	}
	if got := tracked(); got == 0 {
		t.Fatal("no connection tracked: the test proves nothing")
	}
	deadline := time.Now().Add(5 * time.Second)
	for tracked() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d closed connections still tracked after their collection", tracked(), n)
		}
		runtime.GC() // the cleanups run after a collection, on their own goroutine: poll
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTrackDialTLSAfterStop: a dial of a base's own TLS dialer that ends
// after its service stopped, with no attempt left to use it (a dial that
// outlived its request), is closed at once and reported as ErrClosed,
// as trackDial does, instead of joining the stopped clone's pool.
func TestTrackDialTLSAfterStop(t *testing.T) {
	closed := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateClosed {
			close(closed)
		}
	}
	srv.StartTLS()
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	d := &tls.Dialer{Config: &tls.Config{RootCAs: pool, ServerName: "example.com"}}
	s := &service{name: "example", stopped: true}
	c, err := s.trackDialTLS(d.DialContext)(context.Background(), "tcp", srv.Listener.Addr().String())
	if !errors.Is(err, ErrClosed) || c != nil {
		t.Fatalf("dial after stop: %v, %v; want ErrClosed", c, err)
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the connection dialed after the stop is still open")
	}
}
