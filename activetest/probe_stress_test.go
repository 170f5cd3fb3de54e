package activetest_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/activetest"
)

// TestProbeStressChaos: clients send requests while other goroutines kill,
// drain, restart and fault the instances of a probing fleet whose
// readiness flips, with probes faster than their timeout. Every request
// ends (no hang) with a 200 from an instance, or the balancer's 502 or
// 503; the probes are never counted as served; once the chaos stops and
// every slot is restarted ready, the whole fleet is back in the rotation
// and serves; and the cleanup leaves no goroutine (goleak in TestMain).
func TestProbeStressChaos(t *testing.T) {
	const n = 4
	var handled atomic.Int64 // requests other than probes that reached a handler
	var notReady atomic.Bool
	f := activetest.NewFleet(t, n, func(i int) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/readyz" {
				if notReady.Load() && rand.IntN(2) == 0 {
					http.Error(w, "not ready", http.StatusServiceUnavailable)
					return
				}
				_, _ = io.WriteString(w, "ready")
				return
			}
			handled.Add(1)
			_, _ = io.WriteString(w, "ok")
		})
	}, activetest.WithReadinessProbe(activetest.Probe{Interval: time.Millisecond, Timeout: 20 * time.Millisecond, FailureThreshold: 2, SuccessThreshold: 2}))

	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	report := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	client := &http.Client{Transport: f.Client().Transport, Timeout: 20 * time.Second}
	for range 8 {
		wg.Go(func() {
			for ctx.Err() == nil {
				resp, err := client.Get(f.URL() + "/")
				if err != nil {
					report(fmt.Errorf("GET: %w", err))
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch resp.StatusCode {
				case http.StatusOK, http.StatusBadGateway, http.StatusServiceUnavailable:
				default:
					report(fmt.Errorf("GET: %s", resp.Status))
					return
				}
			}
		})
	}
	for g := range 3 {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := rand.IntN(n)
				switch rand.IntN(6) {
				case 0:
					f.Kill(i)
				case 1:
					_ = f.Drain(i, 10*time.Millisecond)
				case 2:
					f.Restart(i)
				case 3:
					f.SetFault(i, activetest.Fault{Refuse: rand.IntN(2) == 0, Latency: time.Duration(rand.IntN(3)) * 10 * time.Millisecond})
				case 4:
					notReady.Store(g == 0 && !notReady.Load())
				default:
					f.SetFault(i, activetest.Fault{})
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

	notReady.Store(false)
	for i := range n {
		f.SetFault(i, activetest.Fault{})
		f.Restart(i)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Equal(f.Live(), []int{0, 1, 2, 3}) {
		if time.Now().After(deadline) {
			t.Fatalf("live %v 5s after every slot restarted ready, want all", f.Live())
		}
		time.Sleep(time.Millisecond) // polling the rotation, which nothing signals
	}
	sendN(t, f, 20)
	var served int64
	for i := range n {
		served += f.Served(i)
	}
	if h := handled.Load(); served != h {
		t.Fatalf("Served adds up to %d, handlers ran %d requests: probes counted, or requests lost", served, h)
	}
}
