package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
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
func TestFleetSurvivesLosingAnInstance(t *testing.T) {
	for _, tc := range []struct {
		name string
		stop func(f *activetest.Fleet, i int) error
		// maxFailed bounds the failed visits: a kill may cut the one
		// request each user has in flight; a drain cuts nothing.
		maxFailed func(users int) int
	}{
		{"kill", func(f *activetest.Fleet, i int) error { f.Kill(i); return nil }, func(users int) int { return users }},
		{"drain", func(f *activetest.Fleet, i int) error { return f.Drain(i, 5*time.Second) }, func(int) int { return 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const (
				instances = 3
				users     = 12
				phase     = 300 // acknowledged visits between the steps
			)
			env := baseEnv(t, "")
			sessionPrefix(t, env)
			f := activetest.NewFleet(t, instances, fleetInstance(t, env, false))

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
			if err := tc.stop(f, 1); err != nil {
				t.Errorf("stopping instance 1: %v", err)
			}
			stopped := f.Served(1)
			step("with instance 1 down")
			if n := f.Served(1) - stopped; n != 0 {
				t.Errorf("instance 1 served %d requests while down", n)
			}
			f.Restart(1)
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

// fleetInstance returns activetest's newInstance for the service: the
// instance run builds (newService) with env as its environment, served by
// activetest instead of its own listener, without the registration and
// lifecycle of serve (env sets no Consul). activetest closes it (its Redis
// client, configuration and telemetry) after its last request.
//
// With inInstance, sessions are kept in the instance's memory instead of
// Redis: the mistake the fleet test must catch.
func fleetInstance(t *testing.T, env map[string]string, inInstance bool) func(i int) http.Handler {
	var (
		mu  sync.Mutex
		gen = map[int]int{}
	)
	sessions := redisSessions
	if inInstance {
		sessions = func(redis.UniversalClient, Config) (session.Store, error) { return memstore.New() }
	}
	return func(i int) http.Handler {
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
		return svc
	}
}

// The control: the same fleet with sessions kept in each instance. The
// users' counts go back as their requests move between instances; the
// checks above must see it, or they could not see a lost session.
func TestFleetControlSessionsInInstance(t *testing.T) {
	env := baseEnv(t, "")
	f := activetest.NewFleet(t, 3, fleetInstance(t, env, true))
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
