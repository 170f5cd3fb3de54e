package activetest_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/activekit/activekit/activetest"
)

// Under concurrent traffic, a path that refuses connections gets no more
// requests once SetFault returned and the requests then in flight ended:
// the connections that were busy as the fault was set are not used again.
func TestRefuseFaultUnderLoad(t *testing.T) {
	f := activetest.NewFleet(t, 2, func(i int) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(time.Millisecond) // keep connections busy
		})
	})
	ctx := t.Context()
	load := f.Start(ctx, 16, getOK(f.URL()))
	if err := load.WaitOK(ctx, 200); err != nil {
		t.Fatal(err)
	}
	f.SetFault(0, activetest.Fault{Refuse: true})
	// The requests in flight as the fault was set end.
	if err := load.WaitOK(ctx, load.Report().OK+100); err != nil {
		t.Fatal(err)
	}
	before := f.Served(0)
	if err := load.WaitOK(ctx, load.Report().OK+300); err != nil {
		t.Fatal(err)
	}
	rep := load.Stop()
	if n := f.Served(0) - before; n != 0 {
		t.Errorf("slot 0 behind a refusing path served %d more requests", n)
	}
	if rep.Failed != 0 {
		t.Errorf("%v", rep)
	}
}
