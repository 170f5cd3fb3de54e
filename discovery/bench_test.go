package discovery_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/memregistry"
)

// BenchmarkBalancerPickDone measures one Pick and its Done from parallel
// goroutines, over 8 instances.
func BenchmarkBalancerPickDone(b *testing.B) {
	bal, err := discovery.NewBalancer(discovery.BalancerConfig{})
	if err != nil {
		b.Fatal(err)
	}
	bal.Update(instances(8))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l, err := bal.Pick()
			if err != nil {
				b.Error(err)
				return
			}
			l.Done(discovery.Success)
		}
	})
}

// BenchmarkRoundTrip compares a GET through the discovery Transport (resolve
// by service name, P2C pick, trace-context injection, retry wrapper, leased
// body) with the same GET through a plain http.Transport to the same
// httptest server, both with keep-alive connections, from parallel
// goroutines.
func BenchmarkRoundTrip(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	defer srv.Close()
	host, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)

	run := func(b *testing.B, rt http.RoundTripper, url string) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
				resp, err := rt.RoundTrip(req)
				if err != nil {
					b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
			}
		})
	}
	b.Run("http.Transport", func(b *testing.B) {
		base := &http.Transport{MaxIdleConnsPerHost: 64}
		defer base.CloseIdleConnections()
		run(b, base, srv.URL+"/x")
	})
	b.Run("discovery.Transport", func(b *testing.B) {
		base := &http.Transport{MaxIdleConnsPerHost: 64}
		defer base.CloseIdleConnections()
		reg := memregistry.New(memregistry.Config{})
		g, err := reg.Register(context.Background(), discovery.Instance{ID: "a", Service: "orders", Address: host, Port: p})
		if err != nil {
			b.Fatal(err)
		}
		defer g.Close(context.Background())
		tr, err := discovery.NewTransport(reg, discovery.TransportConfig{Base: base})
		if err != nil {
			b.Fatal(err)
		}
		defer tr.Close()
		run(b, tr, "http://orders/x")
	})
}
