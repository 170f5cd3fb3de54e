package activetest_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/activetest"
	"github.com/activekit/activekit/health"
)

// probed is an instance whose /readyz answers 200 while it is ready and
// 503 otherwise, and which records, for each probe, its answer and
// whether its slot was in the balancer's rotation as the probe arrived.
type probed struct {
	slot     int
	fleet    *atomic.Pointer[activetest.Fleet]
	ready    atomic.Bool
	requests atomic.Int64 // requests other than probes

	mu     sync.Mutex
	probes []probeSeen
}

type probeSeen struct{ ok, live bool }

func (p *probed) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/readyz" {
		if _, ok := r.Header["Activetest-Probe"]; ok {
			http.Error(w, "probe header passed through", http.StatusTeapot)
			return
		}
		p.requests.Add(1)
		fmt.Fprint(w, p.slot)
		return
	}
	ok := p.ready.Load()
	var live bool
	if f := p.fleet.Load(); f != nil {
		live = slices.Contains(f.Live(), p.slot)
	}
	p.mu.Lock()
	p.probes = append(p.probes, probeSeen{ok, live})
	p.mu.Unlock()
	if !ok {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprint(w, "ready")
}

// seen returns the probes recorded from the n-th on.
func (p *probed) seen(from int) []probeSeen {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.probes[min(from, len(p.probes)):])
}

func (p *probed) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.probes)
}

// probedFleet starts a fleet of n probed instances, each ready when
// ready(slot, generation) says so, and returns it with the instances in
// each slot, the latest last.
func probedFleet(t *testing.T, n int, ready func(slot, gen int) bool, opts ...activetest.Option) (*activetest.Fleet, func(slot int) *probed) {
	var (
		fp  atomic.Pointer[activetest.Fleet]
		mu  sync.Mutex
		ins = map[int][]*probed{}
	)
	f := activetest.NewFleet(t, n, func(i int) http.Handler {
		mu.Lock()
		defer mu.Unlock()
		p := &probed{slot: i, fleet: &fp}
		p.ready.Store(ready(i, len(ins[i])))
		ins[i] = append(ins[i], p)
		return p
	}, opts...)
	fp.Store(f)
	return f, func(slot int) *probed {
		mu.Lock()
		defer mu.Unlock()
		return ins[slot][len(ins[slot])-1]
	}
}

// sendN sends n GETs through the balancer and fails the test on any answer
// but a 200.
func sendN(t *testing.T, f *activetest.Fleet, n int) {
	t.Helper()
	c := f.Client()
	for range n {
		if code, slot, _ := get(t, c, f.URL()+"/"); code != http.StatusOK {
			t.Fatalf("GET: %d from slot %d", code, slot)
		}
	}
}

// An instance whose readiness fails leaves the rotation after exactly
// FailureThreshold failed probes, within FailureThreshold × Interval and
// some slack, and gets no request while out; it comes back after exactly
// SuccessThreshold passed probes, and gets requests again.
func TestProbeOutAndBack(t *testing.T) {
	const (
		interval = 20 * time.Millisecond
		fall     = 3
		rise     = 2
		slack    = time.Second // a probe's answer, and a loaded machine
	)
	f, in := probedFleet(t, 3, func(int, int) bool { return true },
		activetest.WithReadinessProbe(activetest.Probe{Interval: interval, FailureThreshold: fall, SuccessThreshold: rise}))
	eventually(t, "every instance in the rotation", func() bool { return slices.Equal(f.Live(), []int{0, 1, 2}) })
	p := in(1)

	from := p.count()
	start := time.Now()
	p.ready.Store(false)
	eventually(t, "slot 1 out of the rotation", func() bool { return slices.Equal(f.Live(), []int{0, 2}) })
	if took, most := time.Since(start), fall*interval+slack; took > most {
		t.Errorf("slot 1 left the rotation %v after its readiness failed, want at most %v", took, most)
	}
	eventually(t, "one more probe", func() bool { return len(p.seen(from)) > fall+1 })
	checkThreshold(t, p.seen(from), false, fall)

	before := f.Served(1)
	sendN(t, f, 30)
	if n := f.Served(1) - before; n != 0 {
		t.Errorf("slot 1 out of the rotation served %d requests", n)
	}

	from = p.count()
	start = time.Now()
	p.ready.Store(true)
	eventually(t, "slot 1 back in the rotation", func() bool { return slices.Equal(f.Live(), []int{0, 1, 2}) })
	if took, most := time.Since(start), rise*interval+slack; took > most {
		t.Errorf("slot 1 came back %v after its readiness passed, want at most %v", took, most)
	}
	eventually(t, "one more probe", func() bool { return len(p.seen(from)) > rise+1 })
	checkThreshold(t, p.seen(from), true, rise)

	before = f.Served(1)
	sendN(t, f, 30)
	if n := f.Served(1) - before; n != 10 {
		t.Errorf("slot 1 back in the rotation served %d of 30 requests, want 10", n)
	}
}

// checkThreshold checks the probes seen after readiness turned to ok: the
// first threshold of them found the slot where it was before (in the
// rotation if ok is false), and the ones after found it moved.
func checkThreshold(t *testing.T, seen []probeSeen, ok bool, threshold int) {
	t.Helper()
	for k, s := range seen {
		if s.ok != ok {
			t.Fatalf("probe %d answered ok=%v, want %v", k, s.ok, ok)
		}
		if wantLive := (k < threshold) != ok; s.live != wantLive {
			t.Errorf("probe %d of %d answered ok=%v: slot in rotation %v, want %v (threshold %d)", k+1, len(seen), ok, s.live, wantLive, threshold)
		}
	}
}

// A new instance gets no request before its readiness passes: at
// NewFleet, and after Restart.
func TestProbeNewInstanceWaitsForReady(t *testing.T) {
	probe := activetest.WithReadinessProbe(activetest.Probe{Interval: 10 * time.Millisecond})
	// Slot 1 is never ready at first, in any generation.
	f, in := probedFleet(t, 3, func(slot, _ int) bool { return slot != 1 }, probe)
	// NewFleet returned after the first probes: the ready ones are in.
	if live := f.Live(); !slices.Equal(live, []int{0, 2}) {
		t.Fatalf("Live() after NewFleet = %v, want [0 2]", live)
	}
	check := func(when string) {
		t.Helper()
		p := in(1)
		n := p.count()
		eventually(t, "three more probes", func() bool { return p.count() >= n+3 })
		sendN(t, f, 30)
		if n := p.requests.Load(); n != 0 {
			t.Errorf("%s: slot 1, not ready, got %d requests", when, n)
		}
		p.ready.Store(true)
		eventually(t, "slot 1 in the rotation once ready", func() bool { return slices.Equal(f.Live(), []int{0, 1, 2}) })
		sendN(t, f, 30)
		if n := p.requests.Load(); n != 10 {
			t.Errorf("%s: slot 1, ready, got %d of 30 requests, want 10", when, n)
		}
	}
	check("at NewFleet")

	f.Kill(1)
	f.Restart(1)
	if live := f.Live(); !slices.Equal(live, []int{0, 2}) {
		t.Fatalf("Live() after Restart(1) = %v, want [0 2]", live)
	}
	check("after Restart")
}

// With a SuccessThreshold above 1, NewFleet and Restart still return once
// an instance ready at once is in the rotation (its first SuccessThreshold
// probes passed), as their docs promise, not after its first probe, when
// it is still out and a request sent at once finds no instance.
func TestProbeNewInstanceReadyAtOnceWithRise(t *testing.T) {
	probe := activetest.WithReadinessProbe(activetest.Probe{Interval: 5 * time.Millisecond, SuccessThreshold: 3})
	f, _ := probedFleet(t, 3, func(int, int) bool { return true }, probe)
	if live := f.Live(); !slices.Equal(live, []int{0, 1, 2}) {
		t.Fatalf("Live() after NewFleet = %v, want [0 1 2]", live)
	}
	f.Restart(1)
	if live := f.Live(); !slices.Equal(live, []int{0, 1, 2}) {
		t.Fatalf("Live() after Restart(1) = %v, want [0 1 2]", live)
	}
}

// Probes are not load: Served and a Load's Report count the requests sent
// through the balancer only, and a client cannot pass as a probe.
func TestProbesNotCounted(t *testing.T) {
	f, in := probedFleet(t, 3, func(int, int) bool { return true },
		activetest.WithReadinessProbe(activetest.Probe{Interval: 5 * time.Millisecond}))
	ctx := t.Context()
	load := f.Start(ctx, 4, func(ctx context.Context, _ int, c *http.Client) error {
		req, err := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodGet, f.URL()+"/", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Activetest-Probe", "1") // stripped by the balancer
		return okResponse(c.Do(req))
	})
	if err := load.WaitOK(ctx, 200); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ten probes of each instance", func() bool {
		return in(0).count() >= 10 && in(1).count() >= 10 && in(2).count() >= 10
	})
	rep := load.Stop()
	if rep.Failed != 0 || rep.Canceled != 0 {
		t.Fatalf("%v", rep)
	}
	var served, requests int64
	for i := range 3 {
		served += f.Served(i)
		requests += in(i).requests.Load()
	}
	if served != rep.OK || requests != rep.OK {
		t.Errorf("%d calls succeeded, Served sums to %d and the handlers counted %d", rep.OK, served, requests)
	}
}

// With probing, a Fault on the path to an instance fails its probes too,
// and the balancer takes it out, as HAProxy's checks would.
func TestProbeRefusedPathTakesOut(t *testing.T) {
	f, _ := probedFleet(t, 2, func(int, int) bool { return true },
		activetest.WithReadinessProbe(activetest.Probe{Interval: 10 * time.Millisecond}))
	f.SetFault(0, activetest.Fault{Refuse: true})
	eventually(t, "slot 0 out", func() bool { return slices.Equal(f.Live(), []int{1}) })
	f.SetFault(0, activetest.Fault{})
	eventually(t, "slot 0 back", func() bool { return slices.Equal(f.Live(), []int{0, 1}) })
}

// lifecycleInstance is an instance drained as health.Lifecycle drains
// one: readiness from a health.Registry, which fails from MarkDraining on,
// while requests are still served.
type lifecycleInstance struct {
	http.Handler
	reg *health.Registry
}

func newLifecycleInstance(t *testing.T, i int) *lifecycleInstance {
	reg, err := health.NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	reg.MarkStarted()
	mux := http.NewServeMux()
	mux.Handle("GET /readyz", reg.Handler(health.Readiness))
	mux.Handle("GET /", answer(i))
	return &lifecycleInstance{mux, reg}
}

// The drain sequence of health.Lifecycle (readiness fails, the drain delay
// passes, then the server shuts down) loses no request behind a balancer
// that probes readiness, even one that retries nothing (as a Kubernetes
// Service). The controls: behind the same balancer, a drain that shuts
// down at once loses requests; without probing, the balancer leaves the
// instance as Drain begins, so that mistake does not show.
func TestProbeLifecycleDrain(t *testing.T) {
	const (
		interval   = 20 * time.Millisecond
		fall       = 3
		drainDelay = time.Second // ≫ fall × interval, for a loaded machine
		workers    = 8
		phase      = 200
	)
	for _, tc := range []struct {
		name           string
		probing        bool
		readinessFirst bool
		// want checks the run; nil only logs it.
		want func(activetest.Report) error
	}{
		{"probing/lifecycle", true, true, func(rep activetest.Report) error {
			if rep.Failed != 0 {
				return errors.New("requests lost")
			}
			return nil
		}},
		// Requests sent to the closed port until the probes failed: the
		// balancer retries nothing, so the client gets its 503.
		{"probing/shutdown at once", true, false, func(rep activetest.Report) error {
			if rep.Errors["503 Service Unavailable"] == 0 {
				return errors.New("no request met the closed port")
			}
			return nil
		}},
		// Drain took the instance out before it shut down: nothing met
		// the closed port, and a rare request may have met a connection
		// closed under it (a 502).
		{"no probing/shutdown at once", false, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := []activetest.Option{activetest.WithConnectRetries(0)}
			if tc.probing {
				opts = append(opts, activetest.WithReadinessProbe(activetest.Probe{Interval: interval, FailureThreshold: fall}))
			}
			var (
				mu  sync.Mutex
				cur = map[int]*lifecycleInstance{}
			)
			f := activetest.NewFleet(t, 3, func(i int) http.Handler {
				in := newLifecycleInstance(t, i)
				mu.Lock()
				cur[i] = in
				mu.Unlock()
				return in
			}, opts...)
			ctx := t.Context()
			load := f.Start(ctx, workers, func(ctx context.Context, _ int, c *http.Client) error {
				return okResponse(c.Get(f.URL() + "/"))
			})
			step := func() {
				t.Helper()
				if err := load.WaitOK(ctx, load.Report().OK+phase); err != nil {
					t.Fatal(err)
				}
			}
			step()
			if tc.readinessFirst {
				mu.Lock()
				in := cur[1]
				mu.Unlock()
				in.reg.MarkDraining()
				time.Sleep(drainDelay) // the drain delay itself, as Lifecycle waits it
			}
			if err := f.Drain(1, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			eventually(t, "slot 1 out of the rotation", func() bool { return slices.Equal(f.Live(), []int{0, 2}) })
			step()
			f.Restart(1)
			eventually(t, "slot 1 back in the rotation", func() bool { return slices.Equal(f.Live(), []int{0, 1, 2}) })
			step()
			rep := load.Stop()
			t.Logf("%s: %v", tc.name, rep)
			if tc.want != nil {
				if err := tc.want(rep); err != nil {
					t.Errorf("%v: %v", err, rep)
				}
			}
		})
	}
}

// Kill, Drain and Restart are safe while the balancer probes and traffic
// flows: the fleet ends with every slot in the rotation, and the cleanup
// leaves no prober behind (goleak).
func TestProbeFaultsUnderLoad(t *testing.T) {
	f := activetest.NewFleet(t, 3, answer, activetest.WithReadinessProbe(activetest.Probe{Interval: 5 * time.Millisecond, FailureThreshold: 1}))
	ctx := t.Context()
	load := f.Start(ctx, 8, getOK(f.URL()))
	for k := range 12 {
		if err := load.WaitOK(ctx, load.Report().OK+30); err != nil {
			t.Fatal(err)
		}
		switch k % 3 {
		case 0:
			f.Kill(k % 3)
		case 1:
			_ = f.Drain(k%3, 5*time.Second)
		case 2:
			var killed sync.WaitGroup
			killed.Go(func() { f.Kill(2) })
			_ = f.Drain(2, 5*time.Second)
			killed.Wait()
		}
		f.Restart(k % 3)
	}
	eventually(t, "every slot in the rotation", func() bool { return slices.Equal(f.Live(), []int{0, 1, 2}) })
	t.Log(load.Stop())
}
