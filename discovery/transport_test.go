package discovery_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/memregistry"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/retry"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// backend is a real HTTP server registered as an instance of a service.
type backend struct {
	id   string
	srv  *httptest.Server
	hits atomic.Int64
	// mode: 0 answers 200 with its id; 1 answers 503; 2 drops the connection.
	mode atomic.Int32
	// killed, once closed, makes every request in flight or to come
	// drop its connection.
	killed chan struct{}
	// bodies records request bodies.
	mu     sync.Mutex
	bodies []string
	header http.Header
}

const (
	modeOK = iota
	mode503
	modeDrop
	modeEmpty // 200 with no body
)

func newBackend(t *testing.T, id string) *backend { return newSlowBackend(t, id, 0) }

// newSlowBackend returns a backend that spends work on each request.
func newSlowBackend(t *testing.T, id string, work time.Duration) *backend {
	t.Helper()
	b := &backend{id: id, killed: make(chan struct{})}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.bodies = append(b.bodies, string(body))
		b.header = r.Header.Clone()
		b.header.Set("X-Host", r.Host)
		b.mu.Unlock()
		if work > 0 {
			select {
			case <-b.killed:
				dropConn(w)
				return
			case <-time.After(work): // the request's work, not synchronisation
			}
		}
		switch b.mode.Load() {
		case mode503:
			http.Error(w, "draining", http.StatusServiceUnavailable)
		case modeDrop:
			dropConn(w)
		case modeEmpty:
			w.Header().Set("Content-Length", "0")
		default:
			fmt.Fprint(w, b.id)
		}
	}))
	t.Cleanup(b.srv.Close)
	return b
}

// dropConn closes the connection under a handler without answering, as a
// crashed process would.
func dropConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // reset, not a clean close
	}
	_ = conn.Close()
}

func (b *backend) instance(service string) discovery.Instance {
	host, port, _ := net.SplitHostPort(b.srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	return discovery.Instance{ID: b.id, Service: service, Address: host, Port: p}
}

// fleet registers backends in a memregistry and returns a Transport over it.
func fleet(t *testing.T, cfg discovery.TransportConfig, backends ...*backend) (*memregistry.Registry, *discovery.Transport) {
	t.Helper()
	reg := memregistry.New(memregistry.Config{})
	for _, b := range backends {
		r, err := reg.Register(context.Background(), b.instance("orders"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close(context.Background()) })
	}
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	if cfg.Base == nil {
		cfg.Base = base
	}
	tr, err := discovery.NewTransport(reg, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return reg, tr
}

func get(t *testing.T, c *http.Client, url string) (int, string, error) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

func TestTransportSpreadsRequests(t *testing.T) {
	a, b, c := newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "c")
	_, tr := fleet(t, discovery.TransportConfig{}, a, b, c)
	client := &http.Client{Transport: tr}
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			for range 50 {
				code, _, err := get(t, client, "http://orders/x")
				if err != nil || code != 200 {
					t.Errorf("GET: %d %v", code, err)
					return
				}
			}
		})
	}
	wg.Wait()
	for _, be := range []*backend{a, b, c} {
		if n := be.hits.Load(); n < 50 {
			t.Errorf("%s got %d of 300 requests, want about 100", be.id, n)
		}
	}
	// The Host header names the service.
	a.mu.Lock()
	host := a.header.Get("X-Host")
	a.mu.Unlock()
	if host != "orders" {
		t.Errorf("Host header %q, want orders", host)
	}
}

// TestTransportRetriesOnDifferentInstance: both instances answer 503, so a
// GET is tried once on each, never twice on one, and the last 503 is
// returned.
func TestTransportRetriesOnDifferentInstance(t *testing.T) {
	for _, mode := range []int32{mode503, modeDrop} {
		t.Run(fmt.Sprint("mode ", mode), func(t *testing.T) {
			a, b := newBackend(t, "a"), newBackend(t, "b")
			a.mode.Store(mode)
			b.mode.Store(mode)
			_, tr := fleet(t, discovery.TransportConfig{Balancer: discovery.BalancerConfig{MaxEjectedPercent: -1}}, a, b)
			client := &http.Client{Transport: tr}
			code, _, err := get(t, client, "http://orders/x")
			if a.hits.Load() != 1 || b.hits.Load() != 1 {
				t.Fatalf("hits a=%d b=%d, want one each", a.hits.Load(), b.hits.Load())
			}
			switch mode {
			case mode503:
				if err != nil || code != http.StatusServiceUnavailable {
					t.Fatalf("GET: %d %v, want the last 503", code, err)
				}
			case modeDrop:
				if err == nil {
					t.Fatalf("GET: %d, want an error", code)
				}
			}
		})
	}
}

// TestTransportRetryRecovers: one instance drops connections, the other
// answers; every GET succeeds.
func TestTransportRetryRecovers(t *testing.T) {
	bad, good := newBackend(t, "bad"), newBackend(t, "good")
	bad.mode.Store(modeDrop)
	_, tr := fleet(t, discovery.TransportConfig{Balancer: discovery.BalancerConfig{MaxEjectedPercent: -1}}, bad, good)
	client := &http.Client{Transport: tr}
	for range 40 {
		code, body, err := get(t, client, "http://orders/x")
		if err != nil || code != 200 || body != "good" {
			t.Fatalf("GET: %d %q %v", code, body, err)
		}
	}
	if bad.hits.Load() == 0 {
		t.Fatal("the bad instance was never tried: the test proves nothing")
	}
}

func TestTransportNonIdempotentNotRetried(t *testing.T) {
	a, b := newBackend(t, "a"), newBackend(t, "b")
	a.mode.Store(modeDrop)
	b.mode.Store(modeDrop)
	_, tr := fleet(t, discovery.TransportConfig{}, a, b)
	client := &http.Client{Transport: tr}
	resp, err := client.Post("http://orders/x", "text/plain", strings.NewReader("pay 10"))
	if err == nil {
		resp.Body.Close()
		t.Fatal("POST succeeded against dropping instances")
	}
	if n := a.hits.Load() + b.hits.Load(); n != 1 {
		t.Fatalf("POST sent %d times, want 1", n)
	}
	// A 503 to a POST is returned as is, not retried.
	a.mode.Store(mode503)
	b.mode.Store(mode503)
	resp, err = client.Post("http://orders/x", "text/plain", strings.NewReader("pay 10"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if n := a.hits.Load() + b.hits.Load(); resp.StatusCode != 503 || n != 2 {
		t.Fatalf("POST: %d after %d sends, want 503 after 2", resp.StatusCode, n)
	}
}

func TestTransportIdempotencyKeyRetriedWithBody(t *testing.T) {
	a, b := newBackend(t, "a"), newBackend(t, "b")
	a.mode.Store(mode503)
	b.mode.Store(mode503)
	_, tr := fleet(t, discovery.TransportConfig{Balancer: discovery.BalancerConfig{MaxEjectedPercent: -1}}, a, b)
	req, _ := http.NewRequest(http.MethodPost, "http://orders/pay", strings.NewReader("pay 10"))
	req.Header.Set(discovery.IdempotencyKeyHeader, "k1")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, be := range []*backend{a, b} {
		be.mu.Lock()
		bodies := be.bodies
		be.mu.Unlock()
		if len(bodies) != 1 || bodies[0] != "pay 10" {
			t.Errorf("%s received %q, want one \"pay 10\"", be.id, bodies)
		}
	}

	// A body that cannot be replayed is sent once.
	req, _ = http.NewRequest(http.MethodPost, "http://orders/pay", io.NopCloser(strings.NewReader("pay 20")))
	req.Header.Set(discovery.IdempotencyKeyHeader, "k2")
	if req.GetBody != nil {
		t.Fatal("test setup: GetBody set")
	}
	resp, err = tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if n := a.hits.Load() + b.hits.Load(); n != 3 {
		t.Fatalf("%d sends in all, want 3 (2 + 1 unreplayable)", n)
	}
}

func TestTransportRetryBudget(t *testing.T) {
	a, b := newBackend(t, "a"), newBackend(t, "b")
	a.mode.Store(modeDrop)
	b.mode.Store(modeDrop)
	budget, err := retry.NewBudget(retry.BudgetConfig{Ratio: -1, MinPerSecond: -1}) // no retries at all
	if err != nil {
		t.Fatal(err)
	}
	_, tr := fleet(t, discovery.TransportConfig{Budget: budget, Balancer: discovery.BalancerConfig{MaxEjectedPercent: -1}}, a, b)
	req, _ := http.NewRequest(http.MethodGet, "http://orders/x", nil)
	_, err = tr.RoundTrip(req)
	if !errors.Is(err, retry.ErrBudgetExhausted) {
		t.Fatalf("GET: %v, want ErrBudgetExhausted", err)
	}
	if n := a.hits.Load() + b.hits.Load(); n != 1 {
		t.Fatalf("%d sends, want 1", n)
	}
}

func TestTransportPropagatesTraceContext(t *testing.T) {
	a := newBackend(t, "a")
	_, tr := fleet(t, discovery.TransportConfig{Propagator: propagation.TraceContext{}}, a)
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		SpanID:     trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8},
		TraceFlags: trace.FlagsSampled,
	})
	ctx := trace.ContextWithSpanContext(context.Background(), sc)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://orders/x", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	a.mu.Lock()
	got := a.header.Get("Traceparent")
	a.mu.Unlock()
	want := "00-0102030405060708090a0b0c0d0e0f10-0102030405060708-01"
	if got != want {
		t.Fatalf("traceparent %q, want %q", got, want)
	}
	if req.Header.Get("Traceparent") != "" {
		t.Fatal("the caller's request was modified")
	}
}

func TestTransportNoInstances(t *testing.T) {
	_, tr := fleet(t, discovery.TransportConfig{})
	req, _ := http.NewRequest(http.MethodGet, "http://orders/x", nil)
	if _, err := tr.RoundTrip(req); !errors.Is(err, discovery.ErrNoInstances) {
		t.Fatalf("GET with no instance: %v, want ErrNoInstances", err)
	}
	req, _ = http.NewRequest(http.MethodGet, "http://Not_A_Service/x", nil)
	if _, err := tr.RoundTrip(req); err == nil {
		t.Fatal("GET of an invalid service name succeeded")
	}
}

// silentResolver never delivers a list.
type silentResolver struct{}

func (silentResolver) Watch(ctx context.Context, _ string, _ func(discovery.Update)) error {
	<-ctx.Done()
	return ctx.Err()
}

func TestTransportWaitsForFirstListWithinContext(t *testing.T) {
	tr, err := discovery.NewTransport(silentResolver{}, discovery.TransportConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://orders/x", nil)
	if _, err := tr.RoundTrip(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("GET: %v, want DeadlineExceeded", err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.RoundTrip(req); !errors.Is(err, discovery.ErrClosed) {
		t.Fatalf("GET after Close: %v, want ErrClosed", err)
	}
}

// TestTransportFollowsRegistry: instances that leave or turn unhealthy stop
// receiving requests as soon as the watch delivers.
func TestTransportFollowsRegistry(t *testing.T) {
	a, b := newBackend(t, "a"), newBackend(t, "b")
	reg, tr := fleet(t, discovery.TransportConfig{}, a, b)
	client := &http.Client{Transport: tr}
	if _, _, err := get(t, client, "http://orders/x"); err != nil {
		t.Fatal(err)
	}
	reg.SetHealthy("a", false)
	waitFor(t, func() bool { return len(tr.Balancer("orders").Endpoints()) == 1 })
	before := a.hits.Load()
	for range 20 {
		if code, body, err := get(t, client, "http://orders/x"); err != nil || code != 200 || body != "b" {
			t.Fatalf("GET: %d %q %v", code, body, err)
		}
	}
	if a.hits.Load() != before {
		t.Fatal("unhealthy instance still receives requests")
	}
}

// waitFor polls cond until it holds, failing after 5s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatal("condition not met within 5s")
		case <-tick.C:
		}
	}
}

// TestTransportNonIdempotentRetriedWhenNotSent: a POST whose connection
// could not even be made (the instance is gone: connection refused) was
// never sent, so it goes to another instance, body whole, and is applied
// once.
func TestTransportNonIdempotentRetriedWhenNotSent(t *testing.T) {
	live := newBackend(t, "live")
	rec := &recordingTransport{base: &http.Transport{}, failed: map[string]int{}}
	defer rec.base.(*http.Transport).CloseIdleConnections()
	reg, tr := fleet(t, discovery.TransportConfig{Base: rec, Balancer: discovery.BalancerConfig{MaxEjectedPercent: -1}}, live)
	deadAddr := testenv.FreeAddr(t)
	host, port, _ := net.SplitHostPort(deadAddr)
	p, _ := strconv.Atoi(port)
	r, err := reg.Register(context.Background(), discovery.Instance{ID: "dead", Service: "orders", Address: host, Port: p})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background())
	// Registered before the first request, which starts the watch: the
	// transport sees both instances from the start.

	client := &http.Client{Transport: tr}
	sent := 0
	for i := 0; ; i++ {
		rec.mu.Lock()
		refused := rec.failed[deadAddr]
		rec.mu.Unlock()
		if refused >= 3 {
			break
		}
		if i == 1000 {
			t.Fatalf("the dead instance was picked first %d times in %d POSTs: the test proves nothing", refused, i)
		}
		body := fmt.Sprintf("pay %d", i)
		resp, err := client.Post("http://orders/pay", "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatalf("POST %d: %v", i, err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(got) != "live" {
			t.Fatalf("POST %d: %d %q", i, resp.StatusCode, got)
		}
		sent++
	}
	live.mu.Lock()
	bodies := slices.Clone(live.bodies)
	live.mu.Unlock()
	if len(bodies) != sent {
		t.Fatalf("the live instance received %d POSTs, want %d (each once)", len(bodies), sent)
	}
	for i, b := range bodies {
		if want := fmt.Sprintf("pay %d", i); b != want {
			t.Fatalf("POST %d arrived as %q, want %q", i, b, want)
		}
	}
}
