package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/activetest"
	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/memstore"
)

// The product's claim, proved with activetest: three instances behind a
// balancer, concurrent users each counting visits in their session, one
// instance lost in the middle of the traffic and replaced; no user loses
// an acknowledged visit or their session.
//
// Each load worker is one user (its own cookie jar) sending one request at
// a time. A visit answered 2xx was counted in Redis before it was
// answered, so every later answer, and the final count, must include it.
// A visit that failed may or may not have been counted: the killed
// instance's handler may have written Redis before its connection was cut
// (as a process killed after its write and before its answer), so it
// counts at most once. Hence, for every 2xx answer and for the final
// count: acknowledged+1 <= visits <= acknowledged+failed+1, and visits
// only go up. A lost session would start again at 1; a lost update would
// fall below the acknowledged count.
//
// The balancer probes /readyz as the rolling restart's HAProxy does
// (fleetProbe), and knows nothing else: a killed instance stays in its
// rotation until its probes fail, and a restarted one enters it once its
// readiness (Redis reachable) passes. The drain is the service's own:
// readiness fails (health.Registry.MarkDraining, as the lifecycle does on
// SIGTERM), the configured drain delay passes while requests are still
// served, then the server shuts down. A drain that shut down before the
// probes took the instance out would send requests to a closed port or a
// closed connection, and fail them.
func TestFleetSurvivesLosingAnInstance(t *testing.T) {
	for _, tc := range []struct {
		name string
		stop func(f *activetest.Fleet, svc *service) error
		// maxFailed bounds the failed visits: a kill may cut the one
		// request each user has in flight; a drain cuts nothing.
		maxFailed func(users int) int
		// retries is the balancer's connect retries: a kill's refused
		// connections go elsewhere until the probes fail, as HAProxy
		// with option redispatch does; behind the drain nothing may hide
		// a failed request, as behind the rolling restart's HAProxy.
		retries int
	}{
		{"kill", func(f *activetest.Fleet, _ *service) error { f.Kill(1); return nil }, func(users int) int { return users }, activetest.DefaultConnectRetries},
		{"drain", func(f *activetest.Fleet, svc *service) error {
			cfg := svc.store.Load()
			svc.reg.MarkDraining()
			time.Sleep(cfg.DrainDelay) // the drain delay itself, as health.Lifecycle waits it
			return f.Drain(1, cfg.ShutdownTimeout)
		}, func(int) int { return 0 }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const (
				instances = 3
				users     = 12
				phase     = 300 // acknowledged visits between the steps
			)
			env := baseEnv(t, "")
			// More than the probes take to fail: FailureThreshold ×
			// Interval, and a Redis check's timeout.
			env["ACTIVEKIT_DRAIN_DELAY"] = "1s"
			sessionPrefix(t, env)
			newInstance, current := fleetInstance(t, env, false)
			f := activetest.NewFleet(t, instances, newInstance, fleetProbe, activetest.WithConnectRetries(tc.retries))
			eventually(t, 10*time.Second, "every instance in the rotation", func() bool { return len(f.Live()) == instances })

			us := make([]*fleetUser, users)
			for w := range us {
				us[w] = &fleetUser{}
			}
			ctx := t.Context()
			load := f.Start(ctx, users, func(ctx context.Context, w int, c *http.Client) error {
				// The visit in progress when the load stops finishes,
				// so that each one is acknowledged or failed.
				return us[w].visit(context.WithoutCancel(ctx), c, f.URL())
			})
			step := func(what string) {
				t.Helper()
				wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				if err := load.WaitOK(wctx, load.Report().OK+phase); err != nil {
					t.Fatalf("%s: %d more acknowledged visits: %v (%v)", what, phase, err, load.Report())
				}
			}

			step("before the loss")
			if err := tc.stop(f, current(1)); err != nil {
				t.Errorf("stopping instance 1: %v", err)
			}
			stopped := f.Served(1)
			step("with instance 1 down")
			if n := f.Served(1) - stopped; n != 0 {
				t.Errorf("instance 1 served %d requests while down", n)
			}
			if live := f.Live(); slices.Contains(live, 1) {
				t.Errorf("instance 1 still in the rotation after %d visits: %v", phase, live)
			}
			f.Restart(1)
			eventually(t, 10*time.Second, "the restarted instance 1 in the rotation", func() bool { return slices.Contains(f.Live(), 1) })
			step("after the restart")
			rep := load.Stop()
			if f.Served(1) == stopped {
				t.Error("the restarted instance 1 served no request")
			}
			t.Logf("%s: %v; served per instance: %d %d %d", tc.name, rep, f.Served(0), f.Served(1), f.Served(2))

			if most := tc.maxFailed(users); rep.Failed > int64(most) {
				t.Errorf("%d visits failed, want at most %d: %v", rep.Failed, most, rep)
			}
			var acked, failed int
			for w, u := range us {
				for _, v := range u.violations {
					t.Errorf("user %d: %s", w, v)
				}
				// The final count, read by one more visit.
				final := u.visit(ctx, u.client, f.URL())
				if final != nil || len(u.violations) > 0 {
					t.Errorf("user %d: final visit: %v %v", w, final, u.violations)
					continue
				}
				acked += u.ok - 1 // the final visit aside
				failed += u.failed
				if tc.name == "drain" && u.last != u.ok {
					t.Errorf("user %d: %d visits counted, %d acknowledged, none failed", w, u.last, u.ok)
				}
			}
			if acked == 0 || int64(acked) != rep.OK {
				t.Errorf("%d visits acknowledged to the users, the load counted %d", acked, rep.OK)
			}
			if int64(failed) != rep.Failed {
				t.Errorf("%d visits failed for the users, the load counted %d", failed, rep.Failed)
			}
		})
	}
}

// fleetUser is one user's view of their visits. Only its worker touches it
// while the load runs.
type fleetUser struct {
	client     *http.Client
	ok, failed int      // visits answered 2xx, visits that failed
	canceled   int      // visits cut by the end of the load: counted or not
	last       int      // the count in the last 2xx answer
	violations []string // answers that broke the claim
	wentBack   int      // of them, answers below an acknowledged count
}

// visit counts a visit and checks the answer against the user's history.
func (u *fleetUser) visit(ctx context.Context, c *http.Client, base string) error {
	u.client = c
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/visits", nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			u.canceled++
		} else {
			u.failed++
		}
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode/100 != 2 {
		u.failed++
		if err != nil {
			return err
		}
		return fmt.Errorf("%s", resp.Status)
	}
	var v Visits
	if err := json.Unmarshal(body, &v); err != nil {
		u.failed++
		return fmt.Errorf("answer %q: %w", body, err)
	}
	u.ok++
	// Every acknowledged visit, this one included, is counted; a failed
	// one at most once.
	if v.Visits < u.ok || v.Visits <= u.last {
		u.wentBack++
	}
	if v.Visits < u.ok || v.Visits > u.ok+u.failed+u.canceled || v.Visits <= u.last {
		u.violations = append(u.violations, fmt.Sprintf(
			"visit answered %d (from %s) after %d answered, %d acknowledged, %d failed, %d canceled",
			v.Visits, v.Instance, u.last, u.ok, u.failed, u.canceled))
	}
	u.last = v.Visits
	return nil
}

// fleetProbe probes the instances' readiness as the rolling restart's
// HAProxy does (every 100ms, in after two passed probes), out after two
// failed ones rather than one so that one slow Redis ping under -race
// does not empty the rotation.
var fleetProbe = activetest.WithReadinessProbe(activetest.Probe{
	Path:             "/readyz",
	Interval:         100 * time.Millisecond,
	FailureThreshold: 2,
	SuccessThreshold: 2,
})

// fleetInstance returns activetest's newInstance for the service, and the
// instance now in each slot: the instance run builds (newService) with
// env as its environment, served by activetest instead of its own
// listener, without the registration and lifecycle of serve (env sets no
// Consul), marked started as the lifecycle does once it listens, so that
// its /readyz passes when its checks do. activetest closes it (its Redis
// client, configuration and telemetry) after its last request.
//
// With inInstance, sessions are kept in the instance's memory instead of
// Redis: the mistake the fleet test must catch.
func fleetInstance(t *testing.T, env map[string]string, inInstance bool) (newInstance func(i int) http.Handler, current func(i int) *service) {
	var (
		mu  sync.Mutex
		gen = map[int]int{}
		cur = map[int]*service{}
	)
	sessions := redisSessions
	if inInstance {
		sessions = func(redis.UniversalClient, Config) (session.Store, error) { return memstore.New() }
	}
	newInstance = func(i int) http.Handler {
		mu.Lock()
		g := gen[i]
		gen[i]++
		mu.Unlock()
		e := maps.Clone(env)
		e["ACTIVEKIT_INSTANCE_ID"] = fmt.Sprintf("fleet-%d.%d", i, g)
		svc, err := newService(t.Context(), nil, func(k string) string { return e[k] }, &logSink{addr: make(chan string, 1)}, sessions)
		if err != nil {
			t.Errorf("instance %d: %v", i, err)
			return nil
		}
		svc.reg.MarkStarted()
		mu.Lock()
		cur[i] = svc
		mu.Unlock()
		return svc
	}
	current = func(i int) *service {
		mu.Lock()
		defer mu.Unlock()
		return cur[i]
	}
	return newInstance, current
}

// The control: the same fleet with sessions kept in each instance. The
// users' counts go back as their requests move between instances; the
// checks above must see it, or they could not see a lost session.
func TestFleetControlSessionsInInstance(t *testing.T) {
	env := baseEnv(t, "")
	newInstance, _ := fleetInstance(t, env, true)
	f := activetest.NewFleet(t, 3, newInstance)
	us := []*fleetUser{{}, {}, {}, {}}
	load := f.Start(t.Context(), len(us), func(ctx context.Context, w int, c *http.Client) error {
		return us[w].visit(context.WithoutCancel(ctx), c, f.URL())
	})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := load.WaitOK(ctx, 100); err != nil {
		t.Fatal(err)
	}
	rep := load.Stop()
	wentBack := 0
	for _, u := range us {
		wentBack += u.wentBack
	}
	// Only a count going back is the lost session the control shows: a
	// count too high would be a visit counted twice, another fault.
	if wentBack == 0 {
		t.Errorf("sessions in the instance, %v: no user saw a count go back", rep)
	}
}
