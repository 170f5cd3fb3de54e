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
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery"
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
func TestTransportCloseClosesConnsOfRequestsInFlight(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run("h2="+strconv.FormatBool(h2), func(t *testing.T) {
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
			tr := tlsFleet(t, ca, discovery.TransportConfig{}, insts...)

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
