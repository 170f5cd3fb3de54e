package discovery_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/memregistry"
)

// testCA issues server certificates for the TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "activekit test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue returns a server certificate that names only dnsName: no IP
// address, so that verifying it against an instance's address fails.
func (ca *testCA) issue(t *testing.T, dnsName string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: dnsName},
		DNSNames:     []string{dnsName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsBackend is an https server presenting cert, answering with its id and
// the protocol version it was spoken to with.
type tlsBackend struct {
	id    string
	srv   *httptest.Server
	hits  atomic.Int64
	conns atomic.Int64 // TLS handshakes completed
}

func newTLSBackend(t *testing.T, id string, cert tls.Certificate, h2 bool) *tlsBackend {
	t.Helper()
	b := &tlsBackend{id: id}
	b.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		_, _ = io.WriteString(w, b.id+" "+r.Proto+" "+r.Host)
	}))
	b.srv.EnableHTTP2 = h2
	b.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes
	b.srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{cert},
		VerifyConnection: func(tls.ConnectionState) error {
			b.conns.Add(1)
			return nil
		},
	}
	b.srv.StartTLS()
	t.Cleanup(b.srv.Close)
	return b
}

func (b *tlsBackend) instance(id, service string) discovery.Instance {
	host, port, _ := net.SplitHostPort(b.srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	return discovery.Instance{ID: id, Service: service, Address: host, Port: p}
}

// tlsFleet registers insts and returns a Transport over them whose base
// trusts ca and nothing else.
func tlsFleet(t *testing.T, ca *testCA, cfg discovery.TransportConfig, insts ...discovery.Instance) *discovery.Transport {
	t.Helper()
	cfg.Base = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool}, ForceAttemptHTTP2: true}
	return tlsFleetBase(t, cfg, insts...)
}

// tlsFleetBase registers insts and returns a Transport over them with
// cfg.Base, an *http.Transport.
func tlsFleetBase(t *testing.T, cfg discovery.TransportConfig, insts ...discovery.Instance) *discovery.Transport {
	t.Helper()
	reg := memregistry.New(memregistry.Config{})
	for _, inst := range insts {
		r, err := reg.Register(context.Background(), inst)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close(context.Background()) })
	}
	t.Cleanup(cfg.Base.(*http.Transport).CloseIdleConnections)
	tr, err := discovery.NewTransport(reg, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// TestTransportTLSVerifiesServiceName: an https request through the
// Transport is sent to an instance's address, but the instance's
// certificate is verified against the service name, as an mTLS fleet issues
// them; a certificate for another service is refused.
func TestTransportTLSVerifiesServiceName(t *testing.T) {
	ca := newTestCA(t)
	orders := ca.issue(t, "orders")
	a, b := newTLSBackend(t, "a", orders, true), newTLSBackend(t, "b", orders, true)
	// c presents a certificate for orders while registered as payments.
	c := newTLSBackend(t, "c", orders, false)
	tr := tlsFleet(t, ca, discovery.TransportConfig{},
		a.instance("a", "orders"), b.instance("b", "orders"), c.instance("c", "payments"))
	client := &http.Client{Transport: tr}

	for range 20 {
		code, body, err := get(t, client, "https://orders/x")
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET https://orders/x: %d %q %v", code, body, err)
		}
		if want := " HTTP/2.0 orders"; len(body) < len(want) || body[1:] != want {
			t.Fatalf("GET https://orders/x answered %q, want HTTP/2 with Host orders", body)
		}
	}
	if a.hits.Load() == 0 || b.hits.Load() == 0 {
		t.Fatalf("hits a=%d b=%d, want both instances used", a.hits.Load(), b.hits.Load())
	}
	// One connection per instance: a connection to a is not used for b.
	if a.conns.Load() != 1 || b.conns.Load() != 1 {
		t.Errorf("TLS handshakes a=%d b=%d, want one each", a.conns.Load(), b.conns.Load())
	}

	_, _, err := get(t, client, "https://payments/x")
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &verr) {
		t.Fatalf("GET https://payments/x from an instance whose certificate names orders: %v, want a certificate verification error", err)
	}
	if c.hits.Load() != 0 {
		t.Fatal("the request reached an instance whose certificate names another service")
	}
}

// TestTransportTLSNoReuseAcrossServices: one address registered under two
// services, with a certificate for the first only. A connection made (and
// verified) for the first must not carry a request for the second.
func TestTransportTLSNoReuseAcrossServices(t *testing.T) {
	ca := newTestCA(t)
	a := newTLSBackend(t, "a", ca.issue(t, "orders"), true)
	tr := tlsFleet(t, ca, discovery.TransportConfig{}, a.instance("a", "orders"), a.instance("a2", "payments"))
	client := &http.Client{Transport: tr}
	if code, body, err := get(t, client, "https://orders/x"); err != nil || code != http.StatusOK {
		t.Fatalf("GET https://orders/x: %d %q %v", code, body, err)
	}
	_, body, err := get(t, client, "https://payments/x")
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &verr) {
		t.Fatalf("GET https://payments/x: %q %v, want a certificate verification error (the connection verified for orders was reused)", body, err)
	}
}

// TestTransportTLSServerName: TLSServerName names what the certificate of
// each service's instances must hold.
func TestTransportTLSServerName(t *testing.T) {
	ca := newTestCA(t)
	a := newTLSBackend(t, "a", ca.issue(t, "orders.internal"), false)
	tr := tlsFleet(t, ca, discovery.TransportConfig{
		TLSServerName: func(service string) string { return service + ".internal" },
	}, a.instance("a", "orders"))
	client := &http.Client{Transport: tr}
	code, body, err := get(t, client, "https://orders/x")
	if err != nil || code != http.StatusOK || body != "a HTTP/1.1 orders" {
		t.Fatalf("GET https://orders/x: %d %q %v, want 200 %q", code, body, err, "a HTTP/1.1 orders")
	}
}
