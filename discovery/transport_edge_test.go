package discovery_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/memregistry"
	"github.com/activekit/activekit/retry"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/trace"
)

// TestTransportNilHeader: a request built by hand has a nil Header, which
// http.Transport accepts; injecting the trace context must not panic on it,
// nor give the caller's request a header map.
func TestTransportNilHeader(t *testing.T) {
	a := newBackend(t, "a")
	_, tr := fleet(t, discovery.TransportConfig{Propagator: propagation.TraceContext{}}, a)
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}, TraceFlags: trace.FlagsSampled,
	})
	req, _ := http.NewRequestWithContext(trace.ContextWithSpanContext(context.Background(), sc), http.MethodGet, "http://orders/x", nil)
	req.Header = nil
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	a.mu.Lock()
	got := a.header.Get("Traceparent")
	a.mu.Unlock()
	if got == "" {
		t.Fatal("no traceparent sent")
	}
	if req.Header != nil {
		t.Fatal("the caller's request was modified")
	}
}

// TestTransportEmptyBodyReleasesLease: a response without a body (HEAD, 204,
// Content-Length: 0) is http.NoBody, which callers commonly never close. It
// must not hold its in-flight slot forever, and must stay http.NoBody so
// that code testing for it (httputil.ReverseProxy) still sees it.
func TestTransportEmptyBodyReleasesLease(t *testing.T) {
	a := newBackend(t, "a")
	_, tr := fleet(t, discovery.TransportConfig{}, a)
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		a.mode.Store(modeOK)
		path := "/x"
		if method == http.MethodGet {
			a.mode.Store(modeEmpty)
		}
		req, _ := http.NewRequest(method, "http://orders"+path, nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Body != http.NoBody {
			t.Errorf("%s: body %T, want http.NoBody", method, resp.Body)
		}
		// The body is deliberately not closed.
		if got := tr.Balancer("orders").Endpoints()[0].InFlight; got != 0 {
			t.Fatalf("%s: %d in flight after a response without body, want 0", method, got)
		}
	}
}

// TestTransportAllInstancesTried: when every instance has been tried, the
// error says why the attempts failed (not only that no instance is left),
// and no retry is withdrawn from the budget, nor any back-off waited, for
// an attempt that has no instance to go to.
func TestTransportAllInstancesTried(t *testing.T) {
	a, b := newBackend(t, "a"), newBackend(t, "b")
	a.mode.Store(modeDrop)
	b.mode.Store(modeDrop)
	budget, err := retry.NewBudget(retry.BudgetConfig{Ratio: -1, MinPerSecond: 1}) // 10 retries per 10s
	if err != nil {
		t.Fatal(err)
	}
	before := budget.Available()
	_, tr := fleet(t, discovery.TransportConfig{
		Budget:   budget,
		Balancer: discovery.BalancerConfig{MaxEjectedPercent: -1},
		Retry:    retry.Policy{MaxAttempts: 5, InitialInterval: time.Millisecond, MaxInterval: time.Millisecond},
	}, a, b)
	req, _ := http.NewRequest(http.MethodGet, "http://orders/x", nil)
	_, err = tr.RoundTrip(req)
	if err == nil {
		t.Fatal("GET against two dropping instances succeeded")
	}
	if n := a.hits.Load() + b.hits.Load(); n != 2 {
		t.Fatalf("%d sends, want 2", n)
	}
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("error %q does not carry the connection failure", err)
	}
	if after := budget.Available(); after != before-1 {
		t.Errorf("budget went from %d to %d, want one retry withdrawn", before, after)
	}
}

// closeRecorder is a request body that records Close.
type closeRecorder struct {
	io.Reader
	closed atomic.Int32
}

func (c *closeRecorder) Close() error { c.closed.Add(1); return nil }

// TestTransportClosesBodyOnCancelledContext: a RoundTripper must close the
// request body even when it returns an error without sending anything.
func TestTransportClosesBodyOnCancelledContext(t *testing.T) {
	a := newBackend(t, "a")
	_, tr := fleet(t, discovery.TransportConfig{}, a)
	// Start the watch, so that both the ready channel and ctx are done.
	if code, _, err := get(t, &http.Client{Transport: tr}, "http://orders/x"); err != nil || code != 200 {
		t.Fatal(code, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 50 {
		body := &closeRecorder{Reader: strings.NewReader("pay")}
		req, _ := http.NewRequestWithContext(ctx, http.MethodPut, "http://orders/x", body)
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("pay")), nil }
		req.Header.Set(discovery.IdempotencyKeyHeader, "k")
		if _, err := tr.RoundTrip(req); !errors.Is(err, context.Canceled) {
			t.Fatalf("RoundTrip: %v, want context.Canceled", err)
		}
		if body.closed.Load() == 0 {
			t.Fatal("request body not closed")
		}
	}
}

// TestTransportMetrics: picks, ejections and retries are counted per
// service on the configured MeterProvider.
func TestTransportMetrics(t *testing.T) {
	bad, good := newBackend(t, "bad"), newBackend(t, "good")
	bad.mode.Store(modeDrop)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	_, tr := fleet(t, discovery.TransportConfig{MeterProvider: mp}, bad, good)
	client := &http.Client{Transport: tr}
	const requests = 20
	for range requests {
		if code, body, err := get(t, client, "http://orders/x"); err != nil || code != 200 || body != "good" {
			t.Fatalf("GET: %d %q %v", code, body, err)
		}
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, dp := range sum.DataPoints {
				if v, ok := dp.Attributes.Value(attribute.Key(discovery.AttributeService)); ok && v.AsString() == "orders" {
					got[m.Name] += dp.Value
				}
			}
		}
	}
	// The bad instance is tried once at most (ejected at its first
	// dropped connection), and that request is retried on the good one.
	if got[discovery.MetricEjections] != 1 || got[discovery.MetricRetries] != 1 || got[discovery.MetricPicks] != requests+1 {
		t.Fatalf("counters %v, want 1 ejection, 1 retry, %d picks (bad.hits=%d)", got, requests+1, bad.hits.Load())
	}
}

// TestTransportCloseReleasesWaitingRequests: a request waiting for the
// first list of instances when the Transport is closed must return
// (with ErrClosed), not wait for its own context, which may never end.
func TestTransportCloseReleasesWaitingRequests(t *testing.T) {
	tr, err := discovery.NewTransport(silentResolver{}, discovery.TransportConfig{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, "http://orders/x", nil)
		_, err := tr.RoundTrip(req)
		done <- err
	}()
	waitFor(t, func() bool { return tr.Balancer("orders") != nil })
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, discovery.ErrClosed) {
			t.Fatalf("RoundTrip: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RoundTrip still waiting 5s after Close")
	}
}

// TestTransportUpgrade: a 101 Switching Protocols answer's body is the
// upgraded connection, an io.ReadWriteCloser (httputil.ReverseProxy and
// WebSocket clients need it so). The transport must hand it over as is, and
// a connection that may stay open for hours must not count as a request in
// flight.
func TestTransportUpgrade(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		_ = brw.Flush()
		line, _ := brw.ReadString('\n')
		_, _ = brw.WriteString(line)
		_ = brw.Flush()
	}))
	defer srv.Close()
	host, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	reg := memregistry.New(memregistry.Config{})
	g, err := reg.Register(context.Background(), discovery.Instance{ID: "a", Service: "echo", Address: host, Port: p})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close(context.Background())
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	tr, err := discovery.NewTransport(reg, discovery.TransportConfig{Base: base})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	req, _ := http.NewRequest(http.MethodGet, "http://echo/ws", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "echo")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		t.Fatalf("101 body %T is not an io.ReadWriteCloser", resp.Body)
	}
	if got := tr.Balancer("echo").Endpoints()[0].InFlight; got != 0 {
		t.Errorf("%d in flight on an upgraded connection, want 0", got)
	}
	if _, err := io.WriteString(rwc, "hello\n"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(rwc, buf); err != nil || string(buf) != "hello\n" {
		t.Fatalf("echo %q %v", buf, err)
	}
}

// TestTransportCancelledMidRequest: a request whose caller gave up while the
// only instance was answering fails with the caller's context error, not
// with ErrNoInstances ("every instance tried"): the instance was not at
// fault, and a caller that sees ErrNoInstances would report the service
// down.
func TestTransportCancelledMidRequest(t *testing.T) {
	a := newSlowBackend(t, "a", time.Minute)
	defer close(a.killed)
	_, tr := fleet(t, discovery.TransportConfig{}, a)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://orders/x", nil)
	go func() {
		for a.hits.Load() == 0 {
			time.Sleep(time.Millisecond) // polling for the request to arrive
		}
		cancel()
	}()
	_, err := tr.RoundTrip(req)
	if !errors.Is(err, context.Canceled) || errors.Is(err, discovery.ErrNoInstances) {
		t.Fatalf("RoundTrip: %v; want context.Canceled and not ErrNoInstances", err)
	}
}
