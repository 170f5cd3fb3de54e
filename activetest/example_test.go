package activetest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/activetest"
	"github.com/activekit/activekit/health"
)

// exampleT stands in for the *testing.T of a test, which an Example has
// not: it runs the cleanups when the example ends. In your tests, pass t.
type exampleT struct {
	testing.TB
	cleanups []func()
}

func (t *exampleT) Helper()                           {}
func (t *exampleT) Cleanup(f func())                  { t.cleanups = append(t.cleanups, f) }
func (t *exampleT) Error(args ...any)                 { panic(fmt.Sprint(args...)) }
func (t *exampleT) Errorf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }
func (t *exampleT) Fatal(args ...any)                 { panic(fmt.Sprint(args...)) }
func (t *exampleT) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }
func (t *exampleT) done() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}

// Three instances behind a round-robin balancer; one is killed, and the
// others take its share; a replacement comes up and takes it back.
func Example() {
	t := &exampleT{}
	defer t.done()

	f := activetest.NewFleet(t, 3, func(i int) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "instance %d", i)
		})
	})
	c := f.Client()
	round := func() {
		var got []string
		for range 3 {
			resp, err := c.Get(f.URL())
			if err != nil {
				panic(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			got = append(got, string(body))
		}
		fmt.Println(strings.Join(got, ", "))
	}
	round()
	f.Kill(1)
	fmt.Println("live:", f.Live())
	round()
	f.Restart(1)
	round()
	// Output:
	// instance 0, instance 1, instance 2
	// live: [0 2]
	// instance 0, instance 2, instance 0
	// instance 1, instance 2, instance 0
}

// The shape of a test that proves a service loses no acknowledged update
// when an instance dies under load. Here the counter lives in a map shared
// by the instances, standing in for Redis; keep it in an instance and the
// test fails.
func ExampleFleet_Start() {
	t := &exampleT{}
	defer t.done()

	var (
		mu     sync.Mutex
		counts = map[string]int{} // the shared backend
	)
	f := activetest.NewFleet(t, 3, func(int) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			counts[r.URL.Query().Get("user")]++
			mu.Unlock()
		})
	})

	const users = 4
	acked := make([]int, users) // each worker writes only its own
	load := f.Start(context.Background(), users, func(ctx context.Context, w int, c *http.Client) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("%s/?user=%d", f.URL(), w), nil)
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		acked[w]++
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// 200 more acknowledged updates, or the test fails: without them the
	// check below would pass on no load at all.
	step := func(what string) {
		if err := load.WaitOK(ctx, load.Report().OK+200); err != nil {
			t.Fatalf("%s: %v (%v)", what, err, load.Report())
		}
	}
	step("before the kill")
	f.Kill(0)
	step("with instance 0 down")
	f.Restart(0)
	step("after the restart")
	load.Stop()

	lost := 0
	mu.Lock()
	for w := range users {
		// A failed request may have counted too (it may have been cut
		// after the handler ran), so the count may exceed the acks, but
		// never fall short of them.
		if n := counts[fmt.Sprint(w)]; n < acked[w] {
			lost += acked[w] - n
		}
	}
	mu.Unlock()
	fmt.Println("acknowledged updates lost:", lost)
	// Output:
	// acknowledged updates lost: 0
}

// A network fault on the path to one instance: its connections are
// refused, and the balancer sends its requests to the others.
func ExampleFleet_SetFault() {
	t := &exampleT{}
	defer t.done()

	f := activetest.NewFleet(t, 2, func(i int) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	})
	f.SetFault(0, activetest.Fault{Refuse: true})
	c := f.Client()
	for range 4 {
		resp, err := c.Get(f.URL())
		if err != nil {
			panic(err)
		}
		resp.Body.Close()
		fmt.Println(resp.StatusCode, "from instance", resp.Header.Get(activetest.InstanceHeader))
	}
	// Output:
	// 200 from instance 1
	// 200 from instance 1
	// 200 from instance 1
	// 200 from instance 1
}

// A drain as health.Lifecycle runs it, behind a balancer that probes
// readiness: readiness fails, the probes take the instance out of the
// rotation during the drain delay, and only then does it shut down, so
// that no request meets a closed port.
func ExampleWithReadinessProbe() {
	t := &exampleT{}
	defer t.done()

	regs := make([]*health.Registry, 2)
	f := activetest.NewFleet(t, 2, func(i int) http.Handler {
		reg, err := health.NewRegistry()
		if err != nil {
			panic(err)
		}
		reg.MarkStarted() // as Lifecycle.Run does once it listens
		regs[i] = reg
		mux := http.NewServeMux()
		mux.Handle("GET /readyz", reg.Handler(health.Readiness))
		mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "instance %d", i)
		})
		return mux
	}, activetest.WithReadinessProbe(activetest.Probe{
		Path:             "/readyz",
		Interval:         10 * time.Millisecond,
		FailureThreshold: 2,
	}))
	fmt.Println("in rotation:", f.Live())

	regs[1].MarkDraining()             // SIGTERM: readiness fails...
	time.Sleep(500 * time.Millisecond) // ...for the drain delay, longer than 2 probes
	fmt.Println("in rotation:", f.Live())
	fmt.Println("drain:", f.Drain(1, time.Second)) // then the server shuts down
	// Output:
	// in rotation: [0 1]
	// in rotation: [0]
	// drain: <nil>
}
