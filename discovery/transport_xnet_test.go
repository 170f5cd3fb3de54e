package discovery_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/memregistry"
	"golang.org/x/net/http2"
)

// TestTransportTLSNoReuseAcrossServicesXNetHTTP2: a base whose HTTP/2 was
// set up by golang.org/x/net/http2.ConfigureTransports (to tune its pings,
// say) pools its HTTP/2 connections by address, in a pool that a clone of
// the base shares through TLSNextProto. A connection verified for one
// service must still never carry a request for another service at the
// same address: here an ingress that routes by SNI, with a certificate for
// each service, and answers with the name the connection was opened for.
func TestTransportTLSNoReuseAcrossServicesXNetHTTP2(t *testing.T) {
	ca := newTestCA(t)
	certs := map[string]tls.Certificate{"orders": ca.issue(t, "orders"), "payments": ca.issue(t, "payments")}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = fmt.Fprintf(w, "%s %s %s", r.Proto, r.Host, r.TLS.ServerName)
	}))
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = &tls.Config{GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		c, ok := certs[hello.ServerName]
		if !ok {
			return nil, fmt.Errorf("no certificate for %q", hello.ServerName)
		}
		return &c, nil
	}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	a := &tlsBackend{srv: srv}

	reg := memregistry.New(memregistry.Config{})
	for _, inst := range []discovery.Instance{a.instance("a", "orders"), a.instance("a2", "payments")} {
		r, err := reg.Register(context.Background(), inst)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close(context.Background()) })
	}
	base := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool}}
	//lint:ignore SA1019 users still set up HTTP/2 so; the Transport must stay correct with it
	if _, err := http2.ConfigureTransports(base); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(base.CloseIdleConnections)
	tr, err := discovery.NewTransport(reg, discovery.TransportConfig{Base: base})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	client := &http.Client{Transport: tr}

	for _, service := range []string{"orders", "payments", "orders", "payments"} {
		code, body, err := get(t, client, "https://"+service+"/x")
		if want := "HTTP/2.0 " + service + " " + service; err != nil || code != http.StatusOK || body != want {
			t.Fatalf("GET https://%s/x: %d %q %v, want 200 %q", service, code, body, err, want)
		}
	}
}
