package health_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/health"
	"github.com/activekit/activekit/observability"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// failsafe bounds a wait that should end almost at once, so that a bug
// fails the test instead of hanging it. It is not used to synchronise.
const failsafe = 10 * time.Second

func testIdentity(t *testing.T) observability.Identity {
	t.Helper()
	id, err := observability.NewIdentity(observability.IdentityConfig{
		ServiceName:    "orders",
		ServiceVersion: "1.4.2",
		InstanceID:     "orders-7d9f-abcde",
		Getenv:         func(string) string { return "" },
		BuildInfo:      func() (*debug.BuildInfo, bool) { return nil, false },
	})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func newRegistry(t *testing.T, clock *health.FakeClock, opts ...health.Option) *health.Registry {
	t.Helper()
	opts = append([]health.Option{health.WithClock(clock)}, opts...)
	r, err := health.NewRegistry(opts...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// report runs r.Report and fails the test instead of hanging when it does
// not return.
func report(t *testing.T, r *health.Registry, view health.View) health.Response {
	t.Helper()
	got := make(chan health.Response, 1)
	go func() { got <- r.Report(context.Background(), view) }()
	select {
	case resp := <-got:
		return resp
	case <-time.After(failsafe):
		t.Fatalf("%v report did not return", view)
		return health.Response{}
	}
}

func mustRegister(t *testing.T, r *health.Registry, c health.Check) {
	t.Helper()
	if err := r.Register(c); err != nil {
		t.Fatal(err)
	}
}

func serve(t *testing.T, h http.Handler, method string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, "/", nil))
	return rec
}

func keysOf(m map[string]json.RawMessage) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// TestResponseFormat checks the body against the field names of
// draft-inadarei-api-health-check: exact keys, types, content type, status
// code, and a byte-for-byte golden body.
func TestResponseFormat(t *testing.T) {
	clock := health.NewFakeClock(t0)
	r := newRegistry(t, clock,
		health.WithIdentity(testIdentity(t)),
		health.WithReleaseID("build-42"),
		health.WithNotes("canary"),
		health.WithConfigHash(func() string { return "sha256:abc" }),
	)
	mustRegister(t, r, health.Check{
		Name:          "mongodb:responseTime",
		ComponentID:   "rs0",
		ComponentType: "datastore",
		Result: func(context.Context) health.Result {
			return health.Result{Status: health.StatusWarn, ObservedValue: 250, ObservedUnit: "ms", Output: "slow"}
		},
	})
	mustRegister(t, r, health.Check{Name: "redis", ComponentType: "datastore", Func: func(context.Context) error { return nil }})
	r.MarkStarted()

	rec := serve(t, r.Handler(health.Readiness), http.MethodGet)
	if rec.Code != http.StatusOK {
		t.Fatalf("code = %d, want 200 (warn passes)", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/health+json" {
		t.Fatalf("Content-Type = %q", ct)
	}
	if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
		t.Fatalf("Cache-Control = %q", cc)
	}
	body := rec.Body.Bytes()

	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		t.Fatal(err)
	}
	wantTop := []string{"checks", "configHash", "description", "notes", "output", "releaseId", "serviceId", "status", "version"}
	if got := keysOf(top); !reflect.DeepEqual(got, wantTop) {
		t.Fatalf("top-level keys = %v, want %v", got, wantTop)
	}
	var checks map[string][]map[string]json.RawMessage
	if err := json.Unmarshal(top["checks"], &checks); err != nil {
		t.Fatal(err)
	}
	wantCheckKeys := map[string][]string{
		"mongodb:responseTime": {"componentId", "componentType", "observedUnit", "observedValue", "output", "status", "time"},
		"redis":                {"componentType", "status", "time"},
	}
	if len(checks) != len(wantCheckKeys) {
		t.Fatalf("checks = %v", checks)
	}
	for name, want := range wantCheckKeys {
		arr := checks[name]
		if len(arr) != 1 {
			t.Fatalf("checks[%q] has %d elements, want 1", name, len(arr))
		}
		if got := keysOf(arr[0]); !reflect.DeepEqual(got, want) {
			t.Errorf("checks[%q] keys = %v, want %v", name, got, want)
		}
		var ts string
		if err := json.Unmarshal(arr[0]["time"], &ts); err != nil {
			t.Fatal(err)
		}
		if tm, err := time.Parse(time.RFC3339, ts); err != nil || !tm.Equal(t0) {
			t.Errorf("checks[%q].time = %q (%v), want RFC 3339 %v", name, ts, err, t0)
		}
	}

	// The typed form decodes strictly too.
	var resp health.Response
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&resp); err != nil {
		t.Fatal(err)
	}
	if resp.Status != health.StatusWarn || resp.Version != "1.4.2" || resp.ServiceID != "orders-7d9f-abcde" ||
		resp.Description != "orders" || resp.ReleaseID != "build-42" || resp.ConfigHash != "sha256:abc" ||
		!reflect.DeepEqual(resp.Notes, []string{"canary"}) {
		t.Fatalf("response = %+v", resp)
	}

	golden := `{"status":"warn","version":"1.4.2","releaseId":"build-42","notes":["canary"],` +
		`"output":"checks not passing: mongodb:responseTime","serviceId":"orders-7d9f-abcde","description":"orders",` +
		`"configHash":"sha256:abc","checks":{"mongodb:responseTime":[{"componentId":"rs0","componentType":"datastore",` +
		`"observedValue":250,"observedUnit":"ms","status":"warn","time":"2026-03-01T12:00:00Z","output":"slow"}],` +
		`"redis":[{"componentType":"datastore","status":"pass","time":"2026-03-01T12:00:00Z"}]}}` + "\n"
	if string(body) != golden {
		t.Fatalf("body:\n%s\nwant:\n%s", body, golden)
	}
	// Stable: the same state gives the same bytes (map keys sorted, field
	// order fixed).
	for range 5 {
		if again := serve(t, r.Handler(health.Readiness), http.MethodGet).Body.String(); again != golden {
			t.Fatalf("body changed:\n%s", again)
		}
	}
}

func TestStatusCodes(t *testing.T) {
	errDown := errors.New("connection refused")
	tests := []struct {
		name       string
		check      health.Check
		view       health.View
		wantCode   int
		wantStatus health.Status
	}{
		{"no checks", health.Check{}, health.Readiness, 200, health.StatusPass},
		{"pass", health.Check{Func: func(context.Context) error { return nil }}, health.Readiness, 200, health.StatusPass},
		{"error is fail", health.Check{Func: func(context.Context) error { return errDown }}, health.Readiness, 503, health.StatusFail},
		{"Warn(err) is warn", health.Check{Func: func(context.Context) error { return health.Warn(errDown) }}, health.Readiness, 200, health.StatusWarn},
		{"wrapped Warn is warn", health.Check{Func: func(context.Context) error { return errors.Join(health.Warn(errDown)) }}, health.Readiness, 200, health.StatusWarn},
		{"result warn", health.Check{Result: func(context.Context) health.Result { return health.Result{Status: health.StatusWarn} }}, health.Readiness, 200, health.StatusWarn},
		{"result empty status is pass", health.Check{Result: func(context.Context) health.Result { return health.Result{ObservedValue: 1} }}, health.Readiness, 200, health.StatusPass},
		{"result invalid status is fail", health.Check{Result: func(context.Context) health.Result { return health.Result{Status: "ok"} }}, health.Readiness, 503, health.StatusFail},
		{"liveness fail", health.Check{Views: health.Liveness, Func: func(context.Context) error { return errDown }}, health.Liveness, 503, health.StatusFail},
		{"startup fail", health.Check{Views: health.Startup, Func: func(context.Context) error { return errDown }}, health.Startup, 503, health.StatusFail},
		{"startup warn", health.Check{Views: health.Startup, Func: func(context.Context) error { return health.Warn(errDown) }}, health.Startup, 200, health.StatusWarn},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRegistry(t, health.NewFakeClock(t0))
			if tt.check.Func != nil || tt.check.Result != nil {
				tt.check.Name = "dep"
				mustRegister(t, r, tt.check)
			}
			r.MarkStarted()
			rec := serve(t, r.Handler(tt.view), http.MethodGet)
			var resp health.Response
			if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
				t.Fatal(err)
			}
			if rec.Code != tt.wantCode || resp.Status != tt.wantStatus {
				t.Fatalf("got %d %q, want %d %q (body %s)", rec.Code, resp.Status, tt.wantCode, tt.wantStatus, rec.Body)
			}
			if tt.wantStatus == health.StatusFail && tt.check.Name != "" {
				if out := resp.Checks["dep"][0].Output; out == "" {
					t.Fatalf("fail without output: %s", rec.Body)
				}
			}
		})
	}
}

func TestDependencyFailureNeverFailsLiveness(t *testing.T) {
	r := newRegistry(t, health.NewFakeClock(t0))
	mustRegister(t, r, health.Check{Name: "mongodb", Func: func(context.Context) error { return errors.New("no primary") }})
	mustRegister(t, r, health.Check{Name: "kafka", Views: health.Readiness | health.Startup, Func: func(context.Context) error { return errors.New("no brokers") }})
	r.MarkStarted()

	if code := serve(t, r.Handler(health.Readiness), http.MethodGet).Code; code != 503 {
		t.Fatalf("readiness = %d, want 503", code)
	}
	live := serve(t, r.Handler(health.Liveness), http.MethodGet)
	var resp health.Response
	if err := json.Unmarshal(live.Body.Bytes(), &resp); err != nil {
		t.Fatal(err)
	}
	if live.Code != 200 || resp.Status != health.StatusPass || len(resp.Checks) != 0 {
		t.Fatalf("liveness = %d %s, want 200 pass with no checks", live.Code, live.Body)
	}

	// Only a check registered for liveness affects it.
	var deadlocked atomic.Bool
	mustRegister(t, r, health.Check{Name: "deadlock", Views: health.Liveness, Interval: -1, Func: func(context.Context) error {
		if deadlocked.Load() {
			return errors.New("event loop stuck")
		}
		return nil
	}})
	if code := serve(t, r.Handler(health.Liveness), http.MethodGet).Code; code != 200 {
		t.Fatalf("liveness = %d, want 200", code)
	}
	deadlocked.Store(true)
	if code := serve(t, r.Handler(health.Liveness), http.MethodGet).Code; code != 503 {
		t.Fatalf("liveness = %d, want 503", code)
	}
}

func TestStateGatesViews(t *testing.T) {
	clock := health.NewFakeClock(t0)
	r := newRegistry(t, clock)
	var calls atomic.Int32
	mustRegister(t, r, health.Check{Name: "dep", Interval: -1, Func: func(context.Context) error { calls.Add(1); return nil }})

	type want struct {
		code   int
		output string
	}
	expect := func(step string, view health.View, w want) {
		t.Helper()
		resp := r.Report(t.Context(), view)
		code := 200
		if resp.Status == health.StatusFail {
			code = 503
		}
		if code != w.code || resp.Output != w.output {
			t.Fatalf("%s: %v = %d %q, want %d %q", step, view, code, resp.Output, w.code, w.output)
		}
	}
	if s := r.State(); s != health.StateStarting {
		t.Fatalf("state = %v", s)
	}
	expect("starting", health.Readiness, want{503, "starting"})
	expect("starting", health.Startup, want{503, "starting"})
	expect("starting", health.Liveness, want{200, ""})

	r.MarkStarted()
	expect("ready", health.Readiness, want{200, ""})
	expect("ready", health.Startup, want{200, ""})
	expect("ready", health.Liveness, want{200, ""})

	r.MarkDraining()
	before := calls.Load()
	expect("draining", health.Readiness, want{503, "draining"})
	if calls.Load() != before {
		t.Fatal("readiness ran its checks while draining")
	}
	expect("draining", health.Liveness, want{200, ""})
	expect("draining", health.Startup, want{200, ""})

	r.MarkStarted() // no way back
	expect("draining after MarkStarted", health.Readiness, want{503, "draining"})

	r.MarkStopped()
	expect("stopped", health.Readiness, want{503, "stopped"})
	expect("stopped", health.Liveness, want{200, ""})

	if resp := r.Report(t.Context(), health.Readiness|health.Liveness); resp.Status != health.StatusFail {
		t.Fatalf("a combined view = %+v, want fail", resp)
	}
}

func TestStartingWithFailingCheckSaysBoth(t *testing.T) {
	r := newRegistry(t, health.NewFakeClock(t0))
	mustRegister(t, r, health.Check{Name: "redis", Func: func(context.Context) error { return errors.New("down") }})
	resp := r.Report(t.Context(), health.Readiness)
	if resp.Status != health.StatusFail || resp.Output != "starting; checks not passing: redis" {
		t.Fatalf("response = %+v", resp)
	}
}

func TestStartupChecksGateReadinessUntilStartupCompletes(t *testing.T) {
	r := newRegistry(t, health.NewFakeClock(t0))
	var warm atomic.Bool
	mustRegister(t, r, health.Check{Name: "cache:warm", Views: health.Startup, Interval: -1, Func: func(context.Context) error {
		if !warm.Load() {
			return errors.New("warming")
		}
		return nil
	}})
	mustRegister(t, r, health.Check{Name: "redis", Interval: -1, Func: func(context.Context) error { return nil }})
	r.MarkStarted()

	resp := r.Report(t.Context(), health.Readiness)
	if resp.Status != health.StatusFail || len(resp.Checks) != 2 {
		t.Fatalf("readiness before warm-up = %+v, want fail with both checks", resp)
	}
	if resp := r.Report(t.Context(), health.Startup); resp.Status != health.StatusFail {
		t.Fatalf("startup before warm-up = %+v", resp)
	}
	warm.Store(true)
	if resp := r.Report(t.Context(), health.Startup); resp.Status != health.StatusPass {
		t.Fatalf("startup after warm-up = %+v", resp)
	}
	// Startup is complete: the startup check no longer gates readiness,
	// even when it would fail again.
	warm.Store(false)
	resp = r.Report(t.Context(), health.Readiness)
	if resp.Status != health.StatusPass || len(resp.Checks) != 1 || resp.Checks["redis"] == nil {
		t.Fatalf("readiness after startup = %+v, want pass with redis only", resp)
	}
}

func TestCheckTimeoutWithFakeClock(t *testing.T) {
	clock := health.NewFakeClock(t0)
	r := newRegistry(t, clock)
	const timeout = time.Hour // never reached in real time
	sawDeadline := make(chan bool, 1)
	returned := make(chan error, 1)
	mustRegister(t, r, health.Check{Name: "slow", Timeout: timeout, Func: func(ctx context.Context) error {
		_, ok := ctx.Deadline()
		sawDeadline <- ok
		<-ctx.Done()
		returned <- context.Cause(ctx)
		return ctx.Err()
	}})
	r.MarkStarted()

	got := make(chan health.Response, 1)
	go func() { got <- r.Report(context.Background(), health.Readiness) }()
	if ok := <-sawDeadline; !ok {
		t.Fatal("check ctx has no deadline")
	}
	clock.WaitPending(1, nil)
	clock.Advance(timeout - time.Nanosecond)
	select {
	case resp := <-got:
		t.Fatalf("result before the timeout: %+v", resp)
	default:
	}
	clock.Advance(time.Nanosecond)
	resp := <-got
	res := resp.Checks["slow"][0]
	if resp.Status != health.StatusFail || res.Output != "timed out after 1h0m0s" || !res.Time.Equal(t0.Add(timeout)) {
		t.Fatalf("response = %+v", resp)
	}
	if err := <-returned; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("check ctx ended with cause %v, want the deadline", err)
	}
}

// A check that ignores ctx is reported as timed out, and is not started a
// second time while the first run is still stuck.
func TestStuckCheckRunsOnce(t *testing.T) {
	clock := health.NewFakeClock(t0)
	r := newRegistry(t, clock)
	var calls atomic.Int32
	release := make(chan struct{})
	started := make(chan struct{}, 10)
	mustRegister(t, r, health.Check{Name: "stuck", Timeout: time.Second, Interval: time.Second, Func: func(context.Context) error {
		calls.Add(1)
		started <- struct{}{}
		<-release // ignores ctx
		return nil
	}})
	r.MarkStarted()

	got := make(chan health.Response, 1)
	go func() { got <- r.Report(context.Background(), health.Readiness) }()
	<-started
	clock.WaitPending(1, nil)
	clock.Advance(time.Second)
	if resp := <-got; resp.Status != health.StatusFail {
		t.Fatalf("response = %+v", resp)
	}
	clock.Advance(time.Hour) // the cached timeout expired long ago
	for range 3 {
		resp := report(t, r, health.Readiness)
		if resp.Status != health.StatusFail || !strings.Contains(resp.Checks["stuck"][0].Output, "timed out") {
			t.Fatalf("response = %+v", resp)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("calls = %d while stuck, want 1", n)
	}

	close(release)
	// Wait for the stuck run to be forgotten: a fresh run then passes.
	for {
		clock.Advance(time.Hour)
		resp := report(t, r, health.Readiness)
		if resp.Status == health.StatusPass {
			break
		}
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("calls = %d, want 2", n)
	}
}

func TestCachingInterval(t *testing.T) {
	clock := health.NewFakeClock(t0)
	r := newRegistry(t, clock)
	var cached, uncached atomic.Int32
	mustRegister(t, r, health.Check{Name: "cached", Interval: 10 * time.Second, Func: func(context.Context) error { cached.Add(1); return nil }})
	mustRegister(t, r, health.Check{Name: "uncached", Interval: -1, Func: func(context.Context) error { uncached.Add(1); return nil }})
	r.MarkStarted()

	report := func() health.Response { return r.Report(t.Context(), health.Readiness) }
	first := report()
	report()
	clock.Advance(10*time.Second - time.Nanosecond)
	second := report()
	if n := cached.Load(); n != 1 {
		t.Fatalf("cached calls = %d within the interval, want 1", n)
	}
	if !second.Checks["cached"][0].Time.Equal(first.Checks["cached"][0].Time) {
		t.Fatal("a cached result changed its time")
	}
	clock.Advance(time.Nanosecond)
	third := report()
	if n := cached.Load(); n != 2 {
		t.Fatalf("cached calls = %d after the interval, want 2", n)
	}
	if !third.Checks["cached"][0].Time.Equal(t0.Add(10 * time.Second)) {
		t.Fatalf("time = %v", third.Checks["cached"][0].Time)
	}
	if n := uncached.Load(); n != 4 {
		t.Fatalf("uncached calls = %d, want 4", n)
	}
}

// A herd of probes runs the check once per interval.
func TestConcurrentProbesShareOneRun(t *testing.T) {
	clock := health.NewFakeClock(t0)
	r := newRegistry(t, clock)
	var calls atomic.Int32
	gate := make(chan struct{})
	mustRegister(t, r, health.Check{Name: "mongodb", Interval: 5 * time.Second, Timeout: time.Hour, Func: func(context.Context) error {
		calls.Add(1)
		<-gate
		return nil
	}})
	r.MarkStarted()
	srv := httptest.NewServer(r.Handler(health.Readiness))
	defer srv.Close()

	const probes = 64
	for round := 1; round <= 3; round++ {
		gate = make(chan struct{})
		codes := make(chan int, probes)
		var wg sync.WaitGroup
		for range probes {
			wg.Go(func() {
				resp, err := srv.Client().Get(srv.URL)
				if err != nil {
					t.Error(err)
					codes <- 0
					return
				}
				resp.Body.Close()
				codes <- resp.StatusCode
			})
		}
		// Let the herd pile up on the single run, then release it.
		for calls.Load() < int32(round) {
			clock.WaitPending(1, nil)
		}
		close(gate)
		wg.Wait()
		close(codes)
		for c := range codes {
			if c != 200 {
				t.Fatalf("round %d: code %d", round, c)
			}
		}
		if n := calls.Load(); n != int32(round) {
			t.Fatalf("round %d: calls = %d, want %d", round, n, round)
		}
		clock.Advance(5 * time.Second)
	}
}

// A probe whose request ends does not end the run that other probes share.
func TestProbeCancellationDoesNotPoisonSharedRun(t *testing.T) {
	clock := health.NewFakeClock(t0)
	r := newRegistry(t, clock)
	started := make(chan struct{})
	gate := make(chan struct{})
	mustRegister(t, r, health.Check{Name: "dep", Timeout: time.Hour, Func: func(ctx context.Context) error {
		close(started)
		<-gate
		return ctx.Err()
	}})
	r.MarkStarted()

	ctx, cancel := context.WithCancel(t.Context())
	first := make(chan health.Response, 1)
	go func() { first <- r.Report(ctx, health.Readiness) }()
	<-started
	second := make(chan health.Response, 1)
	go func() { second <- r.Report(context.Background(), health.Readiness) }()
	cancel()
	if resp := <-first; resp.Status != health.StatusFail || !strings.Contains(resp.Checks["dep"][0].Output, "probe ended") {
		t.Fatalf("cancelled probe = %+v", resp)
	}
	close(gate)
	if resp := <-second; resp.Status != health.StatusPass {
		t.Fatalf("other probe = %+v, want pass", resp)
	}
}

func TestChecksRunConcurrently(t *testing.T) {
	r := newRegistry(t, health.NewFakeClock(t0))
	aRunning, bRunning := make(chan struct{}), make(chan struct{})
	// Each check waits for the other to be running: run one after the
	// other, they would never finish.
	mustRegister(t, r, health.Check{Name: "a", Timeout: time.Hour, Func: func(ctx context.Context) error {
		close(aRunning)
		<-bRunning
		return nil
	}})
	mustRegister(t, r, health.Check{Name: "b", Timeout: time.Hour, Func: func(ctx context.Context) error {
		close(bRunning)
		<-aRunning
		return nil
	}})
	r.MarkStarted()
	done := make(chan health.Response, 1)
	go func() { done <- r.Report(context.Background(), health.Readiness) }()
	select {
	case resp := <-done:
		if resp.Status != health.StatusPass {
			t.Fatalf("response = %+v", resp)
		}
	case <-time.After(failsafe):
		t.Fatal("checks ran one after the other")
	}
}

func TestPanickingCheckIsFail(t *testing.T) {
	var logs bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	r := newRegistry(t, health.NewFakeClock(t0), health.WithLogger(logger))
	mustRegister(t, r, health.Check{Name: "boom", Func: func(context.Context) error { panic("nil map") }})
	mustRegister(t, r, health.Check{Name: "boom:result", Result: func(context.Context) health.Result { panic(errors.New("bad")) }})
	r.MarkStarted()
	resp := r.Report(t.Context(), health.Readiness)
	if resp.Status != health.StatusFail {
		t.Fatalf("response = %+v", resp)
	}
	for name, want := range map[string]string{"boom": "check panicked: nil map", "boom:result": "check panicked: bad"} {
		if got := resp.Checks[name][0].Output; got != want {
			t.Errorf("%s output = %q, want %q", name, got, want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), "check panicked") {
		t.Fatalf("logs = %s", logs.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestResultDefaults(t *testing.T) {
	clock := health.NewFakeClock(t0)
	r := newRegistry(t, clock)
	mustRegister(t, r, health.Check{Name: "a", ComponentID: "db1", ComponentType: "datastore", Result: func(context.Context) health.Result {
		return health.Result{ObservedValue: 3, Time: t0.Add(-time.Hour)}
	}})
	mustRegister(t, r, health.Check{Name: "b", ComponentID: "db1", Result: func(context.Context) health.Result {
		return health.Result{ComponentID: "db2", ComponentType: "system"}
	}})
	r.MarkStarted()
	resp := r.Report(t.Context(), health.Readiness)
	want := map[string]health.CheckResult{
		"a": {ComponentID: "db1", ComponentType: "datastore", ObservedValue: 3, Status: health.StatusPass, Time: t0},
		"b": {ComponentID: "db2", ComponentType: "system", Status: health.StatusPass, Time: t0},
	}
	for name, w := range want {
		if got := resp.Checks[name][0]; !reflect.DeepEqual(got, w) {
			t.Errorf("%s = %+v, want %+v", name, got, w)
		}
	}
}

func TestHandlerMethods(t *testing.T) {
	r := newRegistry(t, health.NewFakeClock(t0))
	r.MarkStarted()
	h := r.Handler(health.Readiness)
	head := serve(t, h, http.MethodHead)
	if head.Code != 200 || head.Body.Len() != 0 || head.Header().Get("Content-Type") != health.ContentType {
		t.Fatalf("HEAD = %d %q %q", head.Code, head.Body, head.Header())
	}
	post := serve(t, h, http.MethodPost)
	if post.Code != http.StatusMethodNotAllowed || post.Header().Get("Allow") != "GET, HEAD" {
		t.Fatalf("POST = %d %v", post.Code, post.Header())
	}
}

func TestUnencodableObservedValueIsFail(t *testing.T) {
	r := newRegistry(t, health.NewFakeClock(t0), health.WithIdentity(testIdentity(t)))
	mustRegister(t, r, health.Check{Name: "odd", Result: func(context.Context) health.Result {
		return health.Result{ObservedValue: make(chan int)}
	}})
	r.MarkStarted()
	rec := serve(t, r.Handler(health.Readiness), http.MethodGet)
	var resp health.Response
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
		t.Fatal(err)
	}
	if rec.Code != 503 || resp.Status != health.StatusFail || resp.ServiceID != "orders-7d9f-abcde" {
		t.Fatalf("got %d %s", rec.Code, rec.Body)
	}
}

func TestRegisterValidation(t *testing.T) {
	ok := func(context.Context) error { return nil }
	res := func(context.Context) health.Result { return health.Result{} }
	tests := []struct {
		name  string
		check health.Check
		want  error
	}{
		{"empty name", health.Check{Func: ok}, health.ErrInvalidCheck},
		{"empty component", health.Check{Name: ":time", Func: ok}, health.ErrInvalidCheck},
		{"two colons", health.Check{Name: "a:b:c", Func: ok}, health.ErrInvalidCheck},
		{"control character", health.Check{Name: "a\nb", Func: ok}, health.ErrInvalidCheck},
		{"no function", health.Check{Name: "a"}, health.ErrInvalidCheck},
		{"two functions", health.Check{Name: "a", Func: ok, Result: res}, health.ErrInvalidCheck},
		{"negative timeout", health.Check{Name: "a", Func: ok, Timeout: -time.Second}, health.ErrInvalidCheck},
		{"unknown view", health.Check{Name: "a", Func: ok, Views: 1 << 5}, health.ErrInvalidCheck},
		{"duplicate", health.Check{Name: "dup", Func: ok}, health.ErrDuplicateCheck},
		{"valid measurement", health.Check{Name: "mongodb:responseTime", Result: res}, nil},
	}
	r := newRegistry(t, health.NewFakeClock(t0))
	mustRegister(t, r, health.Check{Name: "dup", Func: ok})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := r.Register(tt.check)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Register = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestNewRegistryValidation(t *testing.T) {
	tests := []struct {
		name string
		opt  health.Option
	}{
		{"nil option", nil},
		{"nil identity", health.WithIdentity(nil)},
		{"nil clock", health.WithClock(nil)},
		{"nil logger", health.WithLogger(nil)},
		{"nil config hash", health.WithConfigHash(nil)},
		{"zero default timeout", health.WithCheckDefaults(0, time.Second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := health.NewRegistry(tt.opt); !errors.Is(err, health.ErrInvalidOption) {
				t.Fatalf("NewRegistry = %v, want ErrInvalidOption", err)
			}
		})
	}
}

func TestCheckDefaults(t *testing.T) {
	clock := health.NewFakeClock(t0)
	r := newRegistry(t, clock, health.WithCheckDefaults(time.Minute, time.Hour))
	var calls atomic.Int32
	mustRegister(t, r, health.Check{Name: "a", Func: func(context.Context) error { calls.Add(1); return nil }})
	r.MarkStarted()
	r.Report(t.Context(), health.Readiness)
	clock.Advance(time.Hour - time.Second)
	r.Report(t.Context(), health.Readiness)
	if n := calls.Load(); n != 1 {
		t.Fatalf("calls = %d, want 1 within the default interval", n)
	}
}

func TestViewAndStateStrings(t *testing.T) {
	for v, want := range map[health.View]string{
		health.Liveness: "liveness", health.Readiness: "readiness", health.Startup: "startup",
		health.Readiness | health.Startup: "readiness|startup", 0: "View(0)", 1 << 6: "View(64)",
	} {
		if got := v.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", uint8(v), got, want)
		}
	}
	for s, want := range map[health.State]string{
		health.StateStarting: "starting", health.StateReady: "ready", health.StateDraining: "draining",
		health.StateStopped: "stopped", 9: "State(9)",
	} {
		if got := s.String(); got != want {
			t.Errorf("State %d = %q, want %q", int32(s), got, want)
		}
	}
}

// Registering, reporting and changing state at once is race free.
func TestConcurrentRegisterReportAndState(t *testing.T) {
	r := newRegistry(t, health.NewFakeClock(t0))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 20 {
				name := "dep" + string(rune('a'+i)) + ":" + string(rune('a'+j))
				mustRegister(t, r, health.Check{Name: name, Interval: -1, Views: health.Readiness | health.Liveness,
					Func: func(context.Context) error { return nil }})
			}
		})
		wg.Go(func() {
			for range 20 {
				for _, v := range []health.View{health.Liveness, health.Readiness, health.Startup} {
					if resp := r.Report(t.Context(), v); resp.Status == "" {
						t.Error("empty status")
					}
				}
			}
		})
	}
	wg.Go(func() { r.MarkStarted(); r.MarkDraining() })
	wg.Wait()
	if resp := r.Report(t.Context(), health.Liveness); len(resp.Checks) != 160 || resp.Status != health.StatusPass {
		t.Fatalf("liveness has %d checks, status %s", len(resp.Checks), resp.Status)
	}
}

// The description defaults to the identity's service name; WithDescription
// replaces it.
func TestDescription(t *testing.T) {
	clock := health.NewFakeClock(t0)
	id := testIdentity(t)
	r := newRegistry(t, clock, health.WithIdentity(id))
	r.MarkStarted()
	if got := r.Report(context.Background(), health.Liveness).Description; got != id.ServiceName() {
		t.Fatalf("default description %q, want the service name %q", got, id.ServiceName())
	}
	r = newRegistry(t, clock, health.WithIdentity(id), health.WithDescription("orders API, zone b"))
	r.MarkStarted()
	if got := r.Report(context.Background(), health.Liveness).Description; got != "orders API, zone b" {
		t.Fatalf("description %q, want the one given", got)
	}
}

// A readiness probe whose checks are still running when draining begins
// must not answer pass: the answer leaves after readiness has failed, and a
// load balancer that sees it keeps the instance in rotation for one more
// probe interval while the drain delay is already counting down.
func TestReadinessStartedBeforeDrainFails(t *testing.T) {
	r := newRegistry(t, health.NewFakeClock(t0))
	started := make(chan struct{})
	gate := make(chan struct{})
	mustRegister(t, r, health.Check{Name: "dep", Timeout: time.Hour, Func: func(context.Context) error {
		close(started)
		<-gate
		return nil
	}})
	r.MarkStarted()

	got := make(chan health.Response, 1)
	go func() { got <- r.Report(context.Background(), health.Readiness) }()
	<-started
	r.MarkDraining()
	close(gate)
	if resp := <-got; resp.Status != health.StatusFail || !strings.Contains(resp.Output, "draining") {
		t.Fatalf("readiness answered after MarkDraining = %s %q, want fail (draining)", resp.Status, resp.Output)
	}
}
