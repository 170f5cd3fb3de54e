package activetest_test

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/activetest"
)

// countingInstance is one instance of slot 0 in TestServedFinalAfterKill:
// it counts the requests its handler runs, and closes done when the fleet
// closes it, after its last handler returned.
type countingInstance struct {
	calls atomic.Int64
	done  chan struct{}
}

func (c *countingInstance) ServeHTTP(http.ResponseWriter, *http.Request) { c.calls.Add(1) }

func (c *countingInstance) Close() error {
	close(c.done)
	return nil
}

// Once Kill returns, Served is final for the killed instance: no request
// admitted after it is counted, however close to the kill it came; and
// Served counts exactly the requests that reached the handlers. Requests
// hammer the fleet while slot 0 is killed and restarted, round after round.
func TestServedFinalAfterKill(t *testing.T) {
	const rounds = 20
	var (
		mu   sync.Mutex
		gens []*countingInstance // slot 0's instances, in order
	)
	f := activetest.NewFleet(t, 2, func(i int) http.Handler {
		if i != 0 {
			return answer(i)
		}
		in := &countingInstance{done: make(chan struct{})}
		mu.Lock()
		gens = append(gens, in)
		mu.Unlock()
		return in
	})
	load := f.Start(t.Context(), 16, func(ctx context.Context, _ int, c *http.Client) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.URL(), nil)
		if err != nil {
			return err
		}
		return okResponse(c.Do(req))
	})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for r := range rounds {
		if err := load.WaitOK(ctx, load.Report().OK+50); err != nil {
			t.Fatalf("round %d: %v (%v)", r, err, load.Report())
		}
		mu.Lock()
		in := gens[len(gens)-1]
		mu.Unlock()
		f.Kill(0)
		atKill := f.Served(0)
		select {
		case <-in.done: // every handler of the killed instance returned
		case <-ctx.Done():
			t.Fatalf("round %d: the killed instance was not closed", r)
		}
		if n := f.Served(0); n != atKill {
			t.Fatalf("round %d: Served(0) was %d when Kill returned, %d once its handlers returned", r, atKill, n)
		}
		var calls int64
		mu.Lock()
		for _, g := range gens {
			calls += g.calls.Load()
		}
		mu.Unlock()
		if calls != atKill {
			t.Fatalf("round %d: slot 0's handlers ran %d requests, Served(0) says %d", r, calls, atKill)
		}
		f.Restart(0)
	}
	t.Logf("%v; served: %d %d", load.Stop(), f.Served(0), f.Served(1))
}
