package discovery_test

import (
	"context"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery"
)

// recordingTransport counts, per host, the attempts that failed.
type recordingTransport struct {
	base   http.RoundTripper
	mu     sync.Mutex
	failed map[string]int
}

func (r *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.base.RoundTrip(req)
	if err != nil {
		r.mu.Lock()
		r.failed[req.URL.Host]++
		r.mu.Unlock()
	}
	return resp, err
}

// TestInstanceLossUnderLoad runs steady concurrent GETs against three real
// servers and kills one abruptly mid-load: its listener is closed, its open
// connections are reset, and the requests it is serving are dropped without
// an answer. No request may fail, and the dead instance must be ejected at
// its first failure: after that, it is never picked again.
func TestInstanceLossUnderLoad(t *testing.T) {
	const workers = 8
	// Each backend holds each request for a moment, so that some are in
	// flight on the victim when it dies; once killed it drops them.
	backends := []*backend{
		newSlowBackend(t, "a", time.Millisecond),
		newSlowBackend(t, "b", time.Millisecond),
		newSlowBackend(t, "c", time.Millisecond),
	}
	victim := backends[1]
	victimAddr := victim.srv.Listener.Addr().String()

	rec := &recordingTransport{base: &http.Transport{}, failed: map[string]int{}}
	defer rec.base.(*http.Transport).CloseIdleConnections()
	_, tr := fleet(t, discovery.TransportConfig{Base: rec}, backends...)
	client := &http.Client{Transport: tr}

	var ok, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "http://orders/work", nil)
				resp, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					t.Errorf("GET: %v", err)
					continue
				}
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					failed.Add(1)
					t.Errorf("GET: %d %v", resp.StatusCode, err)
					continue
				}
				ok.Add(1)
			}
		})
	}

	waitFor(t, func() bool { return victim.hits.Load() >= 50 })
	// Kill the victim: no new connections, in-flight requests dropped,
	// idle keep-alive connections reset.
	close(victim.killed)
	_ = victim.srv.Listener.Close()
	victim.srv.CloseClientConnections()
	atKill := ok.Load()
	waitFor(t, func() bool { return ok.Load() >= atKill+2000 })
	close(stop)
	wg.Wait()

	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of %d requests failed", n, n+ok.Load())
	}
	rec.mu.Lock()
	victimFailures := rec.failed[victimAddr]
	rec.mu.Unlock()
	if victimFailures == 0 {
		t.Fatal("no attempt failed on the victim: the kill was not seen")
	}
	// Only attempts already picked when the first failure was recorded can
	// fail on the victim: at most one per worker.
	if victimFailures > workers {
		t.Fatalf("%d attempts failed on the victim, want at most %d (ejected at its first failure)", victimFailures, workers)
	}
	var st discovery.EndpointStatus
	for _, s := range tr.Balancer("orders").Endpoints() {
		if s.Instance.ID == victim.id {
			st = s
		}
	}
	if st.EjectedUntil.IsZero() || st.Ejections != 1 {
		t.Fatalf("victim state %+v, want ejected once", st)
	}
	t.Logf("%d requests after the kill, 0 failed; %d attempts failed on the victim and were retried", ok.Load()-atKill, victimFailures)
}
