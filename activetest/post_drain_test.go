package activetest_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/activekit/activekit/activetest"
)

// Drain and Restart under POST traffic with bodies: no request fails, and
// each one reaches a handler once with its body whole. A POST the balancer
// wrote on a keep-alive connection the draining server closed, idle,
// without reading it, goes to another instance, as a GET does.
func TestRollingDrainPostNoFailure(t *testing.T) {
	var (
		mu   sync.Mutex
		seen = map[string]int{}
	)
	f := activetest.NewFleet(t, 3, func(int) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, err := io.ReadAll(r.Body)
			if err != nil {
				return
			}
			mu.Lock()
			seen[string(b)]++
			mu.Unlock()
			fmt.Fprint(w, len(b))
		})
	})
	ctx := t.Context()
	var (
		nmu sync.Mutex
		n   int
	)
	load := f.Start(ctx, 8, func(ctx context.Context, w int, c *http.Client) error {
		nmu.Lock()
		n++
		body := fmt.Sprintf("w%d-%d-%s", w, n, strings.Repeat("x", 100))
		nmu.Unlock()
		return okResponse(c.Post(f.URL(), "text/plain", stringsReader(body)))
	})
	rollingDrain(ctx, t, f, load)
	if rep := load.Stop(); rep.Failed != 0 {
		t.Errorf("rolling drain: %v", rep)
	}
	mu.Lock()
	defer mu.Unlock()
	for b, k := range seen {
		if k != 1 {
			t.Errorf("body %.10s handled %d times", b, k)
		}
	}
}
