package activetest_test

import (
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/activekit/activekit/activetest"
)

// A request handled by a draining instance whose answer was then lost (a
// reset fault) is not sent again to another instance: it was acted upon.
// The client gets a 502.
func TestDrainHandledNotResent(t *testing.T) {
	b := newBlocker()
	f := activetest.NewFleet(t, 2, func(int) http.Handler { return b })
	f.SetFault(0, activetest.Fault{ResetRate: 1})
	c := f.Client()
	res := getAsync(t, c, f.URL()+"?id=x&block=1")
	<-b.entered // on slot 0
	drained := make(chan error, 1)
	go func() { drained <- f.Drain(0, 5*time.Second) }()
	eventually(t, "slot 0 out of the balancer", func() bool { return slices.Equal(f.Live(), []int{1}) })
	close(b.release)
	<-b.ended
	if code := <-res; code != http.StatusBadGateway {
		t.Errorf("request whose answer was reset: %d, want 502", code)
	}
	if n := b.callsOf("x"); n != 1 {
		t.Errorf("the request reached a handler %d times, want 1", n)
	}
	if err := <-drained; err != nil {
		t.Errorf("Drain: %v", err)
	}
}

// A handler that aborts its connection (a panic) on a draining instance
// acted on the request: the balancer does not send it again.
func TestDrainAbortedNotResent(t *testing.T) {
	b := newBlocker()
	f := activetest.NewFleet(t, 2, func(int) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.ServeHTTP(w, r)
			if r.URL.Query().Get("abort") != "" {
				panic(http.ErrAbortHandler)
			}
		})
	})
	c := f.Client()
	res := getAsync(t, c, f.URL()+"?id=x&block=1&abort=1")
	<-b.entered
	drained := make(chan error, 1)
	go func() { drained <- f.Drain(0, 5*time.Second) }()
	eventually(t, "slot 0 out of the balancer", func() bool { return slices.Equal(f.Live(), []int{1}) })
	close(b.release)
	<-b.ended
	code := <-res
	if n := b.callsOf("x"); n != 1 {
		t.Errorf("the request reached a handler %d times (answer %d), want 1", n, code)
	}
	if err := <-drained; err != nil {
		t.Errorf("Drain: %v", err)
	}
}
