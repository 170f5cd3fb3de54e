package discovery_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery"
)

// TestTransportStressIdleWatchesTLS: many goroutines send https requests
// for a few services, all at one SNI-routing address, through a Transport
// whose watches go idle at once (IdleTimeout 1ns: stopped at every sweep
// that finds no request in progress) and with room for fewer watches than
// services. Every request either reaches its own service over a connection
// opened for it, or fails with ErrTooManyServices; nothing deadlocks; and
// after Close no connection to the server is left open.
func TestTransportStressIdleWatchesTLS(t *testing.T) {
	ca := newTestCA(t)
	services := []string{"orders", "payments", "stock"}
	certs := map[string]tls.Certificate{}
	for _, s := range services {
		certs[s] = ca.issue(t, s)
	}
	var conns connCounter
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = fmt.Fprintf(w, "%s %s", r.Host, r.TLS.ServerName)
	}))
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Config.ConnState = conns.hook
	srv.TLS = &tls.Config{GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		c, ok := certs[hello.ServerName]
		if !ok {
			return nil, fmt.Errorf("no certificate for %q", hello.ServerName)
		}
		return &c, nil
	}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	b := &tlsBackend{srv: srv}
	var insts []discovery.Instance
	for _, s := range services {
		insts = append(insts, b.instance(s+"-1", s))
	}
	tr := tlsFleet(t, ca, discovery.TransportConfig{IdleTimeout: time.Nanosecond, MaxServices: 2}, insts...)

	var wg sync.WaitGroup
	errs := make(chan error, 1)
	report := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	for g := range 16 {
		wg.Go(func() {
			for i := range 40 {
				service := services[(g+i)%len(services)]
				req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "https://"+service+"/x", nil)
				resp, err := tr.RoundTrip(req)
				if errors.Is(err, discovery.ErrTooManyServices) {
					continue
				}
				if err != nil {
					report(fmt.Errorf("GET https://%s/x: %w", service, err))
					return
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if want := service + " " + service; err != nil || string(body) != want {
					report(fmt.Errorf("GET https://%s/x: %q %v, want %q", service, body, err, want))
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, &conns)
}

// TestTransportStressIdleWatches: as TestTransportStressIdleWatchesTLS,
// without a network, many more requests, and Close racing with them: a
// request fails only with ErrTooManyServices or ErrClosed, and the
// watches' and sweep's goroutines are gone after Close (goleak in
// TestMain).
func TestTransportStressIdleWatches(t *testing.T) {
	services := []string{"a", "b", "c", "d", "e"}
	res := idleFleet(t, services...)
	release := make(chan struct{})
	close(release)
	tr, err := discovery.NewTransport(res, discovery.TransportConfig{
		Base:        stubBase{release: release},
		IdleTimeout: time.Nanosecond,
		MaxServices: 3,
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	closeNow := make(chan struct{})
	for g := range 32 {
		wg.Go(func() {
			for i := range 300 {
				if g == 0 && i == 150 {
					close(closeNow)
				}
				service := services[(g*7+i)%len(services)]
				err := roundTrip(t, tr, "http://"+service+"/x")
				if err != nil && !errors.Is(err, discovery.ErrTooManyServices) && !errors.Is(err, discovery.ErrClosed) {
					select {
					case errs <- fmt.Errorf("GET http://%s/x: %w", service, err):
					default:
					}
					return
				}
			}
		})
	}
	<-closeNow
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	if n := res.running.Load(); n != 0 {
		t.Fatalf("%d watches running after Close", n)
	}
}
