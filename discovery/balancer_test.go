package discovery_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery"
)

func instances(n int) []discovery.Instance {
	out := make([]discovery.Instance, n)
	for i := range out {
		out[i] = discovery.Instance{ID: fmt.Sprintf("i%d", i), Service: "orders", Address: "127.0.0.1", Port: 10000 + i}
	}
	return out
}

func newBalancer(t *testing.T, cfg discovery.BalancerConfig, n int) *discovery.Balancer {
	t.Helper()
	b, err := discovery.NewBalancer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b.Update(instances(n))
	return b
}

func ejected(b *discovery.Balancer) map[string]bool {
	out := map[string]bool{}
	for _, s := range b.Endpoints() {
		if !s.EjectedUntil.IsZero() {
			out[s.Instance.ID] = true
		}
	}
	return out
}

func TestBalancerConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  discovery.BalancerConfig
	}{
		{"negative failures", discovery.BalancerConfig{ConsecutiveFailures: -1}},
		{"negative connect failures", discovery.BalancerConfig{ConsecutiveConnectFailures: -1}},
		{"negative base", discovery.BalancerConfig{BaseEjectionTime: -time.Second}},
		{"negative max", discovery.BalancerConfig{MaxEjectionTime: -time.Second}},
		{"max below base", discovery.BalancerConfig{BaseEjectionTime: time.Minute, MaxEjectionTime: time.Second}},
		{"percent above 100", discovery.BalancerConfig{MaxEjectedPercent: 101}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := discovery.NewBalancer(tc.cfg); !errors.Is(err, discovery.ErrInvalidConfig) {
				t.Fatalf("NewBalancer: got %v, want ErrInvalidConfig", err)
			}
		})
	}
	if _, err := discovery.NewBalancer(discovery.BalancerConfig{}); err != nil {
		t.Fatalf("zero config: %v", err)
	}
}

// TestBalancerP2CDistribution: with equal load, picks are uniform.
func TestBalancerP2CDistribution(t *testing.T) {
	const n, picks = 4, 40000
	b := newBalancer(t, discovery.BalancerConfig{}, n)
	counts := map[string]int{}
	for range picks {
		l, err := b.Pick()
		if err != nil {
			t.Fatal(err)
		}
		counts[l.Instance().ID]++
		l.Done(discovery.Success)
	}
	for id, c := range counts {
		if share := float64(c) / picks; share < 0.23 || share > 0.27 {
			t.Errorf("instance %s got %.1f%% of picks, want 25%%: %v", id, 100*share, counts)
		}
	}
	if len(counts) != n {
		t.Errorf("picked %d instances, want %d: %v", len(counts), n, counts)
	}
}

// TestBalancerP2CSpreadsInFlight takes leases from many goroutines at once
// and keeps them: the power of two choices must keep the in-flight counts
// of the instances close (a random pick would spread them by about
// sqrt(400*3/16) = 9), and every lease must be counted once.
func TestBalancerP2CSpreadsInFlight(t *testing.T) {
	const n, workers, each = 4, 8, 50
	b := newBalancer(t, discovery.BalancerConfig{}, n)
	leases := make(chan *discovery.Lease, workers*each)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				l, err := b.Pick()
				if err != nil {
					t.Error(err)
					return
				}
				leases <- l
			}
		})
	}
	wg.Wait()
	close(leases)
	lo, hi, sum := workers*each, 0, 0
	for _, s := range b.Endpoints() {
		lo, hi, sum = min(lo, s.InFlight), max(hi, s.InFlight), sum+s.InFlight
	}
	if sum != workers*each || hi-lo > 3 {
		t.Errorf("in flight from %d to %d (sum %d), want within 3 of each other (sum %d)", lo, hi, sum, workers*each)
	}
	for l := range leases {
		l.Done(discovery.Success)
	}
	for _, s := range b.Endpoints() {
		if s.InFlight != 0 {
			t.Errorf("%s: %d in flight after every lease was done", s.Instance.ID, s.InFlight)
		}
	}
}

// TestBalancerP2CAvoidsBusyInstance holds many leases on one instance: the
// power of two choices must then never pick it while the others are idle,
// since it always loses the comparison.
func TestBalancerP2CAvoidsBusyInstance(t *testing.T) {
	b := newBalancer(t, discovery.BalancerConfig{}, 3)
	var busy []*discovery.Lease
	for len(busy) < 10 {
		l, err := b.Pick("i1", "i2")
		if err != nil {
			t.Fatal(err)
		}
		busy = append(busy, l)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	hits := 0
	for range 8 {
		wg.Go(func() {
			for range 500 {
				l, err := b.Pick()
				if err != nil {
					t.Error(err)
					return
				}
				if l.Instance().ID == "i0" {
					mu.Lock()
					hits++
					mu.Unlock()
				}
				l.Done(discovery.Success)
			}
		})
	}
	wg.Wait()
	if hits != 0 {
		t.Errorf("busy instance picked %d times, want 0", hits)
	}
	for _, l := range busy {
		l.Done(discovery.Success)
	}
}

func TestBalancerEjectsAtFirstFailure(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     discovery.BalancerConfig
		outcome discovery.Outcome
	}{
		{"failure threshold 1", discovery.BalancerConfig{ConsecutiveFailures: 1}, discovery.Failure},
		{"unreachable by default", discovery.BalancerConfig{}, discovery.Unreachable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			tc.cfg.Now = clock.Now
			b := newBalancer(t, tc.cfg, 3)
			l, err := b.Pick()
			if err != nil {
				t.Fatal(err)
			}
			bad := l.Instance().ID
			l.Done(tc.outcome)
			if got := ejected(b); !got[bad] || len(got) != 1 {
				t.Fatalf("ejected %v after one %v on %s, want only %s", got, tc.outcome, bad, bad)
			}
			for range 300 {
				l, err := b.Pick()
				if err != nil {
					t.Fatal(err)
				}
				if l.Instance().ID == bad {
					t.Fatalf("picked ejected instance %s", bad)
				}
				l.Done(discovery.Success)
			}
		})
	}
}

func TestBalancerConsecutiveFailures(t *testing.T) {
	b := newBalancer(t, discovery.BalancerConfig{ConsecutiveFailures: 3}, 1)
	b.Update(instances(3)) // i0, i1, i2
	fail := func(o discovery.Outcome) {
		t.Helper()
		for {
			l, err := b.Pick()
			if err != nil {
				t.Fatal(err)
			}
			if l.Instance().ID == "i0" {
				l.Done(o)
				return
			}
			l.Done(discovery.Ignored)
		}
	}
	fail(discovery.Failure)
	fail(discovery.Failure)
	fail(discovery.Success) // resets the count
	fail(discovery.Failure)
	fail(discovery.Failure)
	fail(discovery.Ignored) // says nothing about the instance
	if got := ejected(b); len(got) != 0 {
		t.Fatalf("ejected %v before three failures in a row", got)
	}
	fail(discovery.Failure)
	if got := ejected(b); !got["i0"] {
		t.Fatalf("i0 not ejected after three failures in a row: %v", got)
	}
}

func TestBalancerEjectionCap(t *testing.T) {
	for _, tc := range []struct {
		n, percent, want int
	}{
		{4, 0, 2},   // default 50%
		{4, 50, 2},  //
		{3, 50, 1},  //
		{2, 10, 1},  // at least one of two
		{1, 100, 0}, // never the last
		{5, 100, 4}, // never the last
		{4, -1, 0},  // never
	} {
		t.Run(fmt.Sprintf("%d instances %d%%", tc.n, tc.percent), func(t *testing.T) {
			b := newBalancer(t, discovery.BalancerConfig{ConsecutiveFailures: 1, MaxEjectedPercent: tc.percent}, tc.n)
			// Every instance fails, many times, from many goroutines.
			var wg sync.WaitGroup
			for range 8 {
				wg.Go(func() {
					for range 50 {
						l, err := b.Pick()
						if err != nil {
							t.Error(err)
							return
						}
						l.Done(discovery.Failure)
					}
				})
			}
			wg.Wait()
			if got := len(ejected(b)); got != tc.want {
				t.Fatalf("%d ejected, want %d", got, tc.want)
			}
			// The survivors still take traffic.
			if _, err := b.Pick(); err != nil {
				t.Fatalf("Pick with the cap reached: %v", err)
			}
		})
	}
}

func TestBalancerReadmissionBackoff(t *testing.T) {
	clock := newFakeClock()
	const base = 10 * time.Second
	b := newBalancer(t, discovery.BalancerConfig{
		ConsecutiveFailures: 1, BaseEjectionTime: base, MaxEjectionTime: 25 * time.Second, Now: clock.Now,
	}, 2)
	failI0 := func() {
		t.Helper()
		for range 1000 {
			l, err := b.Pick()
			if err != nil {
				t.Fatal(err)
			}
			if l.Instance().ID == "i0" {
				l.Done(discovery.Failure)
				return
			}
			l.Done(discovery.Success)
		}
		t.Fatal("i0 never picked")
	}
	// Each ejection lasts base times the number of ejections in a row,
	// capped at MaxEjectionTime.
	for k, want := range []time.Duration{base, 2 * base, 25 * time.Second} {
		failI0()
		start := clock.Now()
		got := b.Endpoints()[0]
		if got.Instance.ID != "i0" || got.EjectedUntil.Sub(start) != want {
			t.Fatalf("ejection %d: %s ejected until +%v, want +%v", k+1, got.Instance.ID, got.EjectedUntil.Sub(start), want)
		}
		clock.Advance(want - time.Nanosecond)
		if ejected(b)["i0"] {
			for range 100 {
				l, _ := b.Pick()
				if l.Instance().ID == "i0" {
					t.Fatalf("ejection %d: i0 picked before its ejection ended", k+1)
				}
				l.Done(discovery.Success)
			}
		} else {
			t.Fatalf("ejection %d: re-admitted early", k+1)
		}
		clock.Advance(time.Nanosecond)
		if ejected(b)["i0"] {
			t.Fatalf("ejection %d: still ejected after %v", k+1, want)
		}
	}
	// Served well for long enough, the multiplier decays: 3 -> 2.
	pickI0 := func(o discovery.Outcome) {
		for {
			l, _ := b.Pick()
			if l.Instance().ID == "i0" {
				l.Done(o)
				return
			}
			l.Done(discovery.Success)
		}
	}
	clock.Advance(base)
	pickI0(discovery.Success)
	if got := b.Endpoints()[0].Ejections; got != 2 {
		t.Fatalf("multiplier after %v of success: %d, want 2", base, got)
	}
	pickI0(discovery.Failure)
	start := clock.Now()
	if got := b.Endpoints()[0].EjectedUntil.Sub(start); got != 25*time.Second {
		t.Fatalf("next ejection lasts %v, want %v (3 x base, capped)", got, 25*time.Second)
	}
}

func TestBalancerExclude(t *testing.T) {
	b := newBalancer(t, discovery.BalancerConfig{}, 3)
	for range 200 {
		l, err := b.Pick("i0", "i2")
		if err != nil {
			t.Fatal(err)
		}
		if id := l.Instance().ID; id != "i1" {
			t.Fatalf("picked %s, want i1 (the only one not excluded)", id)
		}
		l.Done(discovery.Success)
	}
	if _, err := b.Pick("i0", "i1", "i2"); !errors.Is(err, discovery.ErrNoInstances) {
		t.Fatalf("Pick with every instance excluded: %v, want ErrNoInstances", err)
	}
}

func TestBalancerEmpty(t *testing.T) {
	b := newBalancer(t, discovery.BalancerConfig{}, 2)
	b.Update(nil)
	if _, err := b.Pick(); !errors.Is(err, discovery.ErrNoInstances) {
		t.Fatalf("Pick after an empty update: %v, want ErrNoInstances", err)
	}
}

// TestBalancerUpdateKeepsState checks that an update keeps the ejection and
// in-flight count of the instances that stay, and that a lease of a removed
// instance can still be finished.
func TestBalancerUpdateKeepsState(t *testing.T) {
	b := newBalancer(t, discovery.BalancerConfig{ConsecutiveFailures: 1}, 3)
	var held *discovery.Lease
	for held == nil {
		l, _ := b.Pick()
		if l.Instance().ID == "i2" {
			held = l
		} else {
			l.Done(discovery.Success)
		}
	}
	for {
		l, _ := b.Pick()
		if l.Instance().ID == "i0" {
			l.Done(discovery.Failure)
			break
		}
		l.Done(discovery.Success)
	}
	all := instances(4)
	b.Update([]discovery.Instance{all[3], all[2], all[0]}) // i1 gone, i3 new
	st := map[string]discovery.EndpointStatus{}
	for _, s := range b.Endpoints() {
		st[s.Instance.ID] = s
	}
	if len(st) != 3 || st["i0"].EjectedUntil.IsZero() || st["i2"].InFlight != 1 {
		t.Fatalf("state after update: %+v", st)
	}
	held.Done(discovery.Success)
	if got := b.Endpoints()[1].InFlight; got != 0 {
		t.Fatalf("i2 in flight after Done: %d", got)
	}
	held.Done(discovery.Failure) // a second Done does nothing
	if got := ejected(b); got["i2"] {
		t.Fatal("second Done counted")
	}
}

// TestBalancerConcurrentUpdates races updates against picks and outcomes;
// run with -race.
func TestBalancerConcurrentUpdates(t *testing.T) {
	b := newBalancer(t, discovery.BalancerConfig{ConsecutiveFailures: 2, BaseEjectionTime: time.Millisecond}, 5)
	all := instances(6)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for k := 0; ; k++ {
			select {
			case <-stop:
				return
			default:
			}
			b.Update(all[k%3 : k%3+3])
		}
	})
	var pickers sync.WaitGroup
	for w := range 6 {
		pickers.Go(func() {
			for k := range 3000 {
				l, err := b.Pick()
				if err != nil {
					t.Error(err)
					return
				}
				l.Done(discovery.Outcome((k + w) % 4))
			}
		})
	}
	pickers.Wait()
	close(stop)
	wg.Wait()
	for _, s := range b.Endpoints() {
		if s.InFlight != 0 {
			t.Errorf("%s: %d in flight", s.Instance.ID, s.InFlight)
		}
	}
}

// TestBalancerStragglersDoNotCount: failures of requests that were already
// in flight when an instance was ejected say nothing new; after the
// ejection it needs ConsecutiveFailures fresh failures to be ejected again
// (Envoy resets the counters when it re-admits a host).
func TestBalancerStragglersDoNotCount(t *testing.T) {
	clock := newFakeClock()
	b := newBalancer(t, discovery.BalancerConfig{ConsecutiveFailures: 3, Now: clock.Now}, 3)
	var leases []*discovery.Lease
	for range 5 {
		l, err := b.Pick("i1", "i2")
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}
	for _, l := range leases {
		l.Done(discovery.Failure) // 3 eject, 2 stragglers
	}
	if !ejected(b)["i0"] {
		t.Fatal("i0 not ejected after 3 failures")
	}
	clock.Advance(discovery.DefaultBaseEjectionTime)
	if ejected(b)["i0"] {
		t.Fatal("i0 still ejected after the base ejection time")
	}
	l, err := b.Pick("i1", "i2")
	if err != nil {
		t.Fatal(err)
	}
	l.Done(discovery.Failure)
	if ejected(b)["i0"] {
		t.Fatal("i0 ejected again by one failure after re-admission: the stragglers' failures counted")
	}
}

// TestBalancerMultiplierCapped: the ejection multiplier stops growing once
// an ejection lasts MaxEjectionTime, so that an instance that recovers
// decays back to short ejections in a bounded time.
func TestBalancerMultiplierCapped(t *testing.T) {
	clock := newFakeClock()
	const base, maxT = 10 * time.Second, 25 * time.Second
	b := newBalancer(t, discovery.BalancerConfig{ConsecutiveFailures: 1, BaseEjectionTime: base, MaxEjectionTime: maxT, Now: clock.Now}, 2)
	fail := func() {
		t.Helper()
		l, err := b.Pick("i1")
		if err != nil {
			t.Fatal(err)
		}
		l.Done(discovery.Failure)
		if !ejected(b)["i0"] {
			t.Fatal("i0 not ejected")
		}
		clock.Advance(maxT)
	}
	for range 40 {
		fail()
	}
	if got := b.Endpoints()[0].Ejections; got != 3 {
		t.Fatalf("multiplier after 40 ejections: %d, want 3 (ceil(max/base))", got)
	}
	// Two base periods of success take it to 1: the next ejection, the
	// second in a row, lasts 20s.
	for range 2 {
		clock.Advance(base)
		l, _ := b.Pick("i1")
		l.Done(discovery.Success)
	}
	l, _ := b.Pick("i1")
	l.Done(discovery.Failure)
	if got := b.Endpoints()[0].EjectedUntil.Sub(clock.Now()); got != 2*base {
		t.Fatalf("ejection after recovery lasts %v, want %v", got, 2*base)
	}
}

// TestBalancerNewAddressStartsAfresh: an instance that comes back under the
// same ID at another address (a StatefulSet pod rescheduled, a fixed
// ACTIVEKIT_INSTANCE_ID) is a new process: the ejection of the dead one it
// replaces must not keep the replacement out of rotation.
func TestBalancerNewAddressStartsAfresh(t *testing.T) {
	clock := newFakeClock()
	b := newBalancer(t, discovery.BalancerConfig{Now: clock.Now}, 2)
	for {
		l, err := b.Pick()
		if err != nil {
			t.Fatal(err)
		}
		if l.Instance().ID == "i0" {
			l.Done(discovery.Unreachable)
			break
		}
		l.Done(discovery.Success)
	}
	if !ejected(b)["i0"] {
		t.Fatal("test setup: i0 not ejected")
	}
	all := instances(2)
	moved := all[0]
	moved.Port = 20000
	b.Update([]discovery.Instance{moved, all[1]})
	if ejected(b)["i0"] {
		t.Fatal("i0 at its new address is still ejected: the dead process's ejection kept its replacement out")
	}
	l, err := b.Pick("i1")
	if err != nil {
		t.Fatalf("Pick excluding i1: %v, want i0 at its new address", err)
	}
	if got := l.Instance().HostPort(); got != moved.HostPort() {
		t.Fatalf("picked %s, want %s", got, moved.HostPort())
	}
	l.Done(discovery.Success)

	// The same address again keeps the state, as before.
	for {
		l, _ := b.Pick()
		if l.Instance().ID == "i0" {
			l.Done(discovery.Unreachable)
			break
		}
		l.Done(discovery.Success)
	}
	b.Update([]discovery.Instance{moved, all[1]})
	if !ejected(b)["i0"] {
		t.Fatal("an update with the same address forgot the ejection")
	}
}
