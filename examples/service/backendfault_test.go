package main

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/activetest"
	"github.com/activekit/activekit/session"
)

// The other half of active-active failure: instance 1 stays up and loses
// its path to Redis (reset; partitioned, nothing passes; or only the
// replies lost) while
// instances 0 and 2 keep theirs, under concurrent users sent through the
// balancer, then the path heals.
//
// What the service promises, and the test checks:
//   - every request that fails is a 503 with Retry-After, from instance 1,
//     with no cookie: the session middleware fails closed and never hands
//     a user a fresh session because the old one could not be read;
//   - instance 1's readiness (redis:ping) fails, so the probing balancer
//     takes it out of the rotation, and instances 0 and 2 serve everyone;
//   - no user loses an acknowledged visit or their session (fleetUser's
//     checks: a replaced session would count from 1 again);
//   - once the path heals, instance 1's readiness passes, it re-enters
//     the rotation and serves again.
//
// Each instance's Redis client dials its own activetest.Proxy (its
// redis_addr), so the fault reaches instance 1 alone, and the proxy
// outlives the instance, as a node's network does.
func TestFleetSurvivesOneInstanceLosingRedis(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault func(*activetest.Proxy)
	}{
		{"cut", (*activetest.Proxy).Cut},
		{"partition", func(p *activetest.Proxy) { p.Blackhole() }},
		// Writes reach Redis and run, their replies are lost: a visit
		// may count and still fail, which fleetUser's bounds allow.
		{"replies lost", func(p *activetest.Proxy) { p.Blackhole(activetest.Downstream) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run := runBackendFault(t, tc.fault, redisSessions)
			run.promise.report(t)
			for _, v := range run.violations {
				t.Error(v)
			}
			if tc.name == "cut" {
				if st := run.proxy.Stats(); st.Cut+st.Refused == 0 {
					t.Errorf("instance 1's proxy cut no connection: %+v", st)
				}
			}
		})
	}
}

// The control: the same cut with a session store that fails open (a
// Redis error reads as no session, a write that fails as written), the
// mistake the test must catch. Users who reach instance 1 before its
// probes take it out are handed a fresh session: their count starts again
// at 1.
func TestFleetControlSessionsFailOpen(t *testing.T) {
	run := runBackendFault(t, (*activetest.Proxy).Cut, func(rdb redis.UniversalClient, cfg Config) (session.Store, error) {
		st, err := redisSessions(rdb, cfg)
		return failOpen{st}, err
	})
	if len(run.violations) == 0 {
		t.Errorf("sessions failing open across a cut: no user saw a broken count (%v)", run.rep)
	}
	t.Logf("sessions failing open: %d answers broke the users' counts", len(run.violations))
}

// failOpen is the mistake: a store whose failures look like success.
type failOpen struct{ session.Store }

func (s failOpen) Load(ctx context.Context, id string, idle time.Duration) (session.Record, bool, error) {
	rec, found, err := s.Store.Load(ctx, id, idle)
	if err != nil {
		return session.Record{}, false, nil
	}
	return rec, found, nil
}

func (s failOpen) Apply(ctx context.Context, id string, d session.Delta) (uint64, error) {
	v, err := s.Store.Apply(ctx, id, d)
	if err != nil {
		return 1, nil
	}
	return v, nil
}

// backendFault is what runBackendFault saw.
type backendFault struct {
	proxy      *activetest.Proxy // instance 1's path to Redis
	promise    *promiseChecker
	rep        activetest.Report
	violations []string // users' counts that broke the claim
}

// runBackendFault runs three instances behind the probing balancer, each
// with its own proxy to Redis and its sessions in the store sessions
// opens, under concurrent users; it faults instance 1's path with fault,
// waits for the probes to take instance 1 out, heals the path, waits for
// it to come back, and returns what the users saw. It fails t when
// traffic does not flow or instance 1 does not leave or re-enter the
// rotation.
func runBackendFault(t *testing.T, fault func(*activetest.Proxy), sessions sessionStore) backendFault {
	t.Helper()
	const (
		instances = 3
		users     = 12
		phase     = 200 // acknowledged visits between the steps
	)
	env := baseEnv(t, "")
	sessionPrefix(t, env)
	// Created before the fleet, so that the fleet's cleanup (which closes
	// the instances' Redis clients) runs before theirs.
	proxies := make([]*activetest.Proxy, instances)
	envs := make([]map[string]string, instances)
	for i := range proxies {
		proxies[i] = activetest.NewProxy(t, env["ACTIVEKIT_REDIS_ADDR"])
		envs[i] = maps.Clone(env)
		envs[i]["ACTIVEKIT_REDIS_ADDR"] = proxies[i].Addr()
	}
	var (
		mu  sync.Mutex
		gen = map[int]int{}
	)
	f := activetest.NewFleet(t, instances, func(i int) http.Handler {
		mu.Lock()
		g := gen[i]
		gen[i]++
		mu.Unlock()
		e := maps.Clone(envs[i])
		e["ACTIVEKIT_INSTANCE_ID"] = fmt.Sprintf("fault-%d.%d", i, g)
		svc, err := newService(t.Context(), nil, func(k string) string { return e[k] }, &logSink{addr: make(chan string, 1)}, sessions)
		if err != nil {
			t.Errorf("instance %d: %v", i, err)
			return nil
		}
		svc.reg.MarkStarted()
		return svc
	}, fleetProbe, activetest.WithConnectRetries(0))
	eventually(t, 10*time.Second, "every instance in the rotation", func() bool { return len(f.Live()) == instances })

	run := backendFault{proxy: proxies[1], promise: &promiseChecker{partitioned: "1"}}
	us := make([]*fleetUser, users)
	for w := range us {
		us[w] = &fleetUser{}
	}
	ctx := t.Context()
	load := f.Start(ctx, users, func(ctx context.Context, w int, c *http.Client) error {
		cc := *c
		cc.Transport = run.promise.wrap(c.Transport)
		return us[w].visit(context.WithoutCancel(ctx), &cc, f.URL())
	})
	step := func(what string) {
		t.Helper()
		// Long enough for users held by the partitioned instance until
		// its Redis client gives up.
		wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		if err := load.WaitOK(wctx, load.Report().OK+phase); err != nil {
			t.Fatalf("%s: %d more acknowledged visits: %v (%v)", what, phase, err, load.Report())
		}
	}

	step("before the fault")
	run.promise.start()
	faulted := time.Now()
	fault(proxies[1])
	eventually(t, 15*time.Second, "instance 1 out of the rotation", func() bool { return !slices.Contains(f.Live(), 1) })
	t.Logf("instance 1 out of the rotation %v after the fault", time.Since(faulted).Round(time.Millisecond))
	step("with instance 1 cut off from Redis")
	if live := f.Live(); !slices.Equal(live, []int{0, 2}) {
		t.Errorf("rotation with instance 1 cut off: %v, want [0 2]", live)
	}

	proxies[1].Heal()
	healed := f.Served(1)
	eventually(t, 15*time.Second, "instance 1 back in the rotation", func() bool { return slices.Contains(f.Live(), 1) })
	step("after the path healed")
	run.rep = load.Stop()
	if f.Served(1) == healed {
		t.Error("instance 1 served no request after the path healed")
	}
	t.Logf("%v; served per instance: %d %d %d; proxy of instance 1: %+v",
		run.rep, f.Served(0), f.Served(1), f.Served(2), proxies[1].Stats())

	var failed int
	for w, u := range us {
		for _, v := range u.violations {
			run.violations = append(run.violations, fmt.Sprintf("user %d: %s", w, v))
		}
		// The final count, read by one more visit.
		if err := u.visit(ctx, u.client, f.URL()); err != nil {
			t.Errorf("user %d: final visit: %v", w, err)
		}
		failed += u.failed
	}
	if int64(failed) != run.rep.Failed {
		t.Errorf("%d visits failed for the users, the load counted %d", failed, run.rep.Failed)
	}
	return run
}

// promiseChecker sees every response the users get, and holds the fleet
// to the service's promise once the fault starts: a request fails only as
// a 503 with Retry-After, from the partitioned instance, without a new
// session cookie.
type promiseChecker struct {
	partitioned string // the InstanceHeader of the instance cut off

	mu       sync.Mutex
	started  bool
	kept     int            // failures as promised
	broken   map[string]int // anything else, by description
	slowest  time.Duration  // the longest a failed request took
	answered map[string]int
}

func (p *promiseChecker) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.started = true
}

func (p *promiseChecker) wrap(next http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		begin := time.Now()
		resp, err := next.RoundTrip(r)
		took := time.Since(begin)
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.answered == nil {
			p.answered, p.broken = map[string]int{}, map[string]int{}
		}
		if err != nil {
			p.broken["transport error: "+err.Error()]++
			return resp, err
		}
		in := resp.Header.Get(activetest.InstanceHeader)
		p.answered[in]++
		if resp.StatusCode/100 == 2 {
			return resp, nil
		}
		p.slowest = max(p.slowest, took)
		retry, cookie := resp.Header.Get("Retry-After"), resp.Header.Get("Set-Cookie")
		if p.started && resp.StatusCode == http.StatusServiceUnavailable && retry != "" && in == p.partitioned && cookie == "" {
			p.kept++
		} else {
			p.broken[fmt.Sprintf("%s from instance %q, Retry-After %q, Set-Cookie %q", resp.Status, in, retry, cookie)]++
		}
		return resp, nil
	})
}

// report fails t for every broken promise, and logs what was kept.
func (p *promiseChecker) report(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	t.Logf("answers by instance: %v; %d failures as promised (503 with Retry-After from instance %s), the slowest after %v",
		p.answered, p.kept, p.partitioned, p.slowest.Round(time.Millisecond))
	for _, d := range slices.Sorted(maps.Keys(p.broken)) {
		t.Errorf("%d× %s", p.broken[d], d)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
