package discovery_test

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/memregistry"
	"github.com/activekit/activekit/internal/testenv"
)

// connCounter counts a server's open connections.
type connCounter struct {
	mu   sync.Mutex
	open map[net.Conn]bool
}

func (c *connCounter) hook(conn net.Conn, st http.ConnState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.open == nil {
		c.open = map[net.Conn]bool{}
	}
	switch st {
	case http.StateNew:
		c.open[conn] = true
	case http.StateClosed, http.StateHijacked:
		delete(c.open, conn)
	}
}

func (c *connCounter) n() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.open)
}

// waitClosed waits up to 3s for every connection counted by cs to close.
func waitClosed(t *testing.T, cs ...*connCounter) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		open := 0
		for _, c := range cs {
			open += c.n()
		}
		if open == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open 3s after Close and the end of the requests in flight", open)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition no event signals to the test
	}
}

// TestTransportCloseClosesConnsOfRequestsInFlight: Close closes the
// connections of the https clones that requests in flight at Close were
// using, once they end, even when one of them goes on to another instance
// after Close (a retry) or speaks HTTP/2 (whose connections have no "close
// once idle" mark), instead of leaving them, and their goroutines, open
// until the base's IdleConnTimeout (never, for a base without one).
//
// It holds whichever way Base dials: DialContext (net/http's handshake), or
// a DialTLSContext or DialTLS of its own, whose *tls.Conn net/http must get
// as is (see TestTransportOwnTLSDialer).
func TestTransportCloseClosesConnsOfRequestsInFlight(t *testing.T) {
	for _, tc := range []struct {
		dialer string
		h2     bool
	}{
		{"DialContext", false}, {"DialContext", true},
		{"DialTLSContext", false}, {"DialTLSContext", true},
		{"DialTLS", false}, {"DialTLS", true},
	} {
		t.Run(tc.dialer+"/h2="+strconv.FormatBool(tc.h2), func(t *testing.T) {
			h2 := tc.h2
			ca := newTestCA(t)
			cert := ca.issue(t, "orders")
			entered := make(chan struct{})
			release := make(chan struct{})
			var hits atomic.Int64
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if hits.Add(1) == 1 {
					close(entered)
					<-release
					w.WriteHeader(http.StatusServiceUnavailable) // retried on the other instance
					return
				}
				_, _ = io.WriteString(w, "ok")
			})
			var counters [2]connCounter
			var insts []discovery.Instance
			for i := range counters {
				srv := httptest.NewUnstartedServer(h)
				srv.EnableHTTP2 = h2
				srv.Config.ErrorLog = log.New(io.Discard, "", 0)
				srv.Config.ConnState = counters[i].hook
				srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
				srv.StartTLS()
				t.Cleanup(srv.Close)
				b := &tlsBackend{srv: srv}
				insts = append(insts, b.instance(strconv.Itoa(i), "orders"))
			}
			tr := tlsFleetBase(t, discovery.TransportConfig{Base: tlsBase(ca, "orders", tc.dialer)}, insts...)

			type result struct {
				code int
				err  error
			}
			done := make(chan result, 1)
			go func() {
				req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "https://orders/x", nil)
				resp, err := tr.RoundTrip(req)
				if err != nil {
					done <- result{err: err}
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				done <- result{code: resp.StatusCode}
			}()
			<-entered
			if err := tr.Close(); err != nil {
				t.Fatal(err)
			}
			close(release)
			r := <-done
			if r.err != nil || r.code != http.StatusOK {
				t.Fatalf("request in flight at Close: %d %v, want 200 from the other instance", r.code, r.err)
			}
			waitClosed(t, &counters[0], &counters[1])
		})
	}
}

// TestTransportTLSNonIdempotentRetriedWhenNotSent: through the https clone
// too, a POST whose connection could not be made (connection refused) goes
// to another instance with its body whole, and reaches it once.
func TestTransportTLSNonIdempotentRetriedWhenNotSent(t *testing.T) {
	ca := newTestCA(t)
	var (
		mu     sync.Mutex
		bodies []string
	)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(b))
		mu.Unlock()
	}))
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.issue(t, "orders")}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	live := (&tlsBackend{srv: srv}).instance("live", "orders")
	deadAddr := testenv.FreeAddr(t) // connection refused
	host, port, _ := net.SplitHostPort(deadAddr)
	p, _ := strconv.Atoi(port)
	dead := discovery.Instance{ID: "dead", Service: "orders", Address: host, Port: p}
	reg := memregistry.New(memregistry.Config{})
	for _, inst := range []discovery.Instance{live, dead} {
		r, err := reg.Register(context.Background(), inst)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close(context.Background()) })
	}
	var refused atomic.Int64
	var d net.Dialer
	base := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: ca.pool},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil && addr == deadAddr {
				refused.Add(1)
			}
			return c, err
		},
	}
	tr, err := discovery.NewTransport(reg, discovery.TransportConfig{Base: base, Balancer: discovery.BalancerConfig{MaxEjectedPercent: -1}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })

	const n = 40
	for i := range n {
		body := "pay " + strconv.Itoa(i)
		req, _ := http.NewRequest(http.MethodPost, "https://orders/pay", strings.NewReader(body))
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatalf("POST %d: %v", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST %d: %s", i, resp.Status)
		}
	}
	if refused.Load() == 0 {
		t.Fatalf("the dead instance was never picked in %d POSTs: the test proves nothing", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bodies) != n {
		t.Fatalf("the live instance received %d POSTs, want %d (each once)", len(bodies), n)
	}
	for i, b := range bodies {
		if want := "pay " + strconv.Itoa(i); b != want {
			t.Fatalf("POST %d arrived as %q, want %q", i, b, want)
		}
	}
}

// tlsBase returns a base that trusts ca, offers HTTP/2, and dials as dialer
// says: "DialContext" (net/http makes the handshake, verifying the name the
// Transport asks for), or "DialTLSContext" or "DialTLS" (its own handshake,
// verifying serverName).
func tlsBase(ca *testCA, serverName, dialer string) *http.Transport {
	base := &http.Transport{ForceAttemptHTTP2: true}
	d := &tls.Dialer{Config: &tls.Config{RootCAs: ca.pool, ServerName: serverName, NextProtos: []string{"h2", "http/1.1"}}}
	switch dialer {
	case "DialContext":
		base.TLSClientConfig = &tls.Config{RootCAs: ca.pool}
		base.DialContext = new(net.Dialer).DialContext
	case "DialTLSContext":
		base.DialTLSContext = d.DialContext
	case "DialTLS":
		//lint:ignore SA1019 a Base may still set DialTLS, which the Transport must track too
		base.DialTLS = func(network, addr string) (net.Conn, error) { return d.Dial(network, addr) }
	default:
		panic("tlsBase: unknown dialer " + dialer)
	}
	return base
}

// TestTransportOwnTLSDialer: with a Base that makes its own TLS handshake
// (DialTLSContext or DialTLS), the Transport tracks the connections it dials
// without hiding the *tls.Conn from net/http, which reads the TLS state and
// negotiates HTTP/2 only from a *tls.Conn: the response carries the TLS
// state, and HTTP/2 is spoken where both ends offer it.
func TestTransportOwnTLSDialer(t *testing.T) {
	for _, dialer := range []string{"DialTLSContext", "DialTLS"} {
		for _, h2 := range []bool{false, true} {
			t.Run(dialer+"/h2="+strconv.FormatBool(h2), func(t *testing.T) {
				ca := newTestCA(t)
				b := newTLSBackend(t, "a", ca.issue(t, "orders"), h2)
				tr := tlsFleetBase(t, discovery.TransportConfig{Base: tlsBase(ca, "orders", dialer)}, b.instance("a", "orders"))
				for i := range 3 {
					req, _ := http.NewRequest(http.MethodGet, "https://orders/x", nil)
					resp, err := tr.RoundTrip(req)
					if err != nil {
						t.Fatal(err)
					}
					body, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					if err != nil {
						t.Fatal(err)
					}
					if resp.TLS == nil || !resp.TLS.HandshakeComplete || resp.TLS.ServerName != "orders" {
						t.Fatalf("request %d: resp.TLS = %+v, want the state of a handshake with orders", i, resp.TLS)
					}
					wantProto, wantMajor := "HTTP/1.1", 1
					if h2 {
						wantProto, wantMajor = "HTTP/2.0", 2
					}
					if resp.ProtoMajor != wantMajor || string(body) != "a "+wantProto+" orders" {
						t.Fatalf("request %d: %s %q, want %s", i, resp.Proto, body, wantProto)
					}
				}
				if n := b.conns.Load(); n != 1 {
					t.Fatalf("%d TLS handshakes for 3 requests in a row, want 1 (the connection reused)", n)
				}
			})
		}
	}
}
