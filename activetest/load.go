package activetest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
)

// WorkFunc is one call of a load worker: typically one request through c,
// returning an error for a failed request or a wrong answer. worker is the
// worker's number, from 0, so that a test can keep each user's state; c is
// that worker's own client (one user, with its own cookie jar) for the
// whole run. A worker's calls run one after another.
type WorkFunc func(ctx context.Context, worker int, c *http.Client) error

// Report counts the calls of a load run.
type Report struct {
	OK     int64 // calls that returned nil
	Failed int64 // calls that returned an error, the stop aside
	// Canceled counts calls cut by the end of the run: they returned the
	// run context's error after it ended. They are neither OK nor Failed,
	// but like a failed call one may have taken effect (its request
	// reached an instance before the cut): bound an invariant by OK+Failed
	// +Canceled, or make fn finish its call (context.WithoutCancel) so
	// that every call is OK or Failed.
	Canceled int64
	// Errors counts failed calls by error text; keep per-request details
	// out of the errors a WorkFunc returns so that equal failures group.
	Errors map[string]int64
}

// String is a one-line summary, the most frequent errors first.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d ok, %d failed, %d canceled", r.OK, r.Failed, r.Canceled)
	keys := slices.SortedFunc(maps.Keys(r.Errors), func(a, b string) int {
		if c := int(r.Errors[b] - r.Errors[a]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	for i, k := range keys {
		if i == 5 {
			fmt.Fprintf(&b, "; and %d more", len(keys)-i)
			break
		}
		fmt.Fprintf(&b, "; %d× %s", r.Errors[k], k)
	}
	return b.String()
}

// Load is concurrent traffic started by Start.
type Load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	rep      Report
	progress chan struct{} // closed and replaced at each OK call
}

// Run runs workers concurrent workers, each calling fn over and over with
// its own client of the balancer, until ctx ends; then it waits for them
// and returns what they did.
func (f *Fleet) Run(ctx context.Context, workers int, fn WorkFunc) Report {
	l := f.Start(ctx, workers, fn)
	<-ctx.Done()
	return l.Stop()
}

// Start runs workers concurrent workers in the background, each calling fn
// over and over with its own client of the balancer (Fleet.Client), until
// Stop, the end of ctx or the end of the test. It starts one goroutine per
// worker; Stop ends them.
func (f *Fleet) Start(ctx context.Context, workers int, fn WorkFunc) *Load {
	ctx, cancel := context.WithCancel(ctx)
	l := &Load{cancel: cancel, progress: make(chan struct{}), rep: Report{Errors: map[string]int64{}}}
	f.tb.Cleanup(func() { l.Stop() })
	for w := range workers {
		c := f.Client()
		l.wg.Go(func() {
			for ctx.Err() == nil {
				l.record(ctx, fn(ctx, w, c))
			}
		})
	}
	return l
}

func (l *Load) record(ctx context.Context, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err == nil:
		l.rep.OK++
		close(l.progress)
		l.progress = make(chan struct{})
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		l.rep.Canceled++
	default:
		l.rep.Failed++
		l.rep.Errors[err.Error()]++
	}
}

// Report returns the counts so far.
func (l *Load) Report() Report {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.rep
	r.Errors = maps.Clone(l.rep.Errors)
	return r
}

// WaitOK waits until at least n calls in all have succeeded, and returns
// nil, or returns ctx's error if it ends first.
func (l *Load) WaitOK(ctx context.Context, n int64) error {
	for {
		l.mu.Lock()
		ok, progress := l.rep.OK, l.progress
		l.mu.Unlock()
		if ok >= n {
			return nil
		}
		select {
		case <-progress:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Stop ends the workers, waits for their calls in progress (cut by the end
// of their context) and returns the final counts. Calling it again returns
// the same counts.
func (l *Load) Stop() Report {
	l.cancel()
	l.wg.Wait()
	return l.Report()
}
