package health_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/activekit/activekit/health"
)

// events records what happened, in order, across goroutines.
type events struct {
	mu   sync.Mutex
	list []string
}

func (e *events) add(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = append(e.list, s)
}

func (e *events) get() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.list...)
}

func recordingClosers(ev *events, names ...string) []health.Closer {
	var cs []health.Closer
	for _, name := range names {
		cs = append(cs, health.Closer{Name: name, Close: func(ctx context.Context) error {
			if _, ok := ctx.Deadline(); !ok || ctx.Err() != nil {
				ev.add("close " + name + " without a live deadline")
			}
			ev.add("close " + name)
			return nil
		}})
	}
	return cs
}

// manualSignal returns a Lifecycle.Signal and a channel that yields the
// function that "sends" the signal.
func manualSignal() (func(context.Context) (context.Context, context.CancelFunc), <-chan context.CancelFunc) {
	sig := make(chan context.CancelFunc, 1)
	return func(ctx context.Context) (context.Context, context.CancelFunc) {
		ctx, cancel := context.WithCancel(ctx)
		sig <- cancel
		return ctx, cancel
	}, sig
}

func listenLocal(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// newClient makes every request on a new connection, so that "new
// requests" really are new to the server.
func newClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

type reply struct {
	code int
	body string
	err  error
}

func get(c *http.Client, url string) reply {
	resp, err := c.Get(url)
	if err != nil {
		return reply{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{code: resp.StatusCode, body: string(b), err: err}
}

// waitFor polls url until it answers code.
func waitFor(t *testing.T, c *http.Client, url string, code int) {
	t.Helper()
	deadline := time.Now().Add(failsafe)
	for {
		r := get(c, url)
		if r.err == nil && r.code == code {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered %d (last %+v)", url, code, r)
		}
		<-time.After(time.Millisecond)
	}
}

// await waits for ch, failing the test instead of hanging.
func await[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(failsafe):
		t.Fatalf("never happened: %s", what)
		var zero T
		return zero
	}
}

func waitRun(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(failsafe):
		t.Fatal("Run did not return")
		return nil
	}
}

// TestLifecycleDrain runs a real server through a whole rolling-update stop:
// readiness fails first while in-flight and new requests still succeed,
// then Shutdown waits for the request in flight, then the closers run in
// reverse order. The fake clock holds the drain delay open until the test
// has made its requests.
func TestLifecycleDrain(t *testing.T) {
	clock := health.NewFakeClock(t0)
	reg := newRegistry(t, clock)
	var ev events
	slowEntered := make(chan struct{}, 1)
	releaseSlow := make(chan struct{})
	mux := http.NewServeMux()
	mux.Handle("/readyz", reg.Handler(health.Readiness))
	mux.Handle("/livez", reg.Handler(health.Liveness))
	mux.Handle("/startupz", reg.Handler(health.Startup))
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		slowEntered <- struct{}{}
		<-releaseSlow
		ev.add("slow done")
		io.WriteString(w, "slow ok")
	})
	mux.HandleFunc("/fast", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "fast ok") })
	l := listenLocal(t)
	srv := &http.Server{Handler: mux}
	shutdownBegan := make(chan struct{})
	srv.RegisterOnShutdown(func() { close(shutdownBegan) })
	drainBegan := make(chan struct{})
	signal, sig := manualSignal()

	lc := health.Lifecycle{
		Registry:        reg,
		Servers:         []health.Server{{HTTP: srv, Listener: l}},
		DrainDelay:      time.Hour, // on the fake clock
		ShutdownTimeout: time.Hour,
		CloseTimeout:    time.Hour,
		GracePeriod:     3 * time.Hour,
		Signal:          signal,
		OnDrain: []func(context.Context) error{func(ctx context.Context) error {
			ev.add("drain hook")
			close(drainBegan)
			return nil
		}},
		Closers: recordingClosers(&ev, "a", "b", "c"),
	}
	done := make(chan error, 1)
	go func() { done <- lc.Run(context.Background()) }()
	term := await(t, sig, "signal source set up")

	base := "http://" + l.Addr().String()
	c := newClient(t)
	waitFor(t, c, base+"/readyz", 200)
	if r := get(c, base+"/startupz"); r.code != 200 {
		t.Fatalf("startup = %+v", r)
	}
	slow := make(chan reply, 1)
	go func() { slow <- get(c, base+"/slow") }()
	await(t, slowEntered, "slow request in flight")

	term() // SIGTERM
	await(t, drainBegan, "drain hook")
	r := get(c, base+"/readyz")
	var resp health.Response
	if err := json.Unmarshal([]byte(r.body), &resp); err != nil || r.code != 503 || resp.Output != "draining" {
		t.Fatalf("readiness while draining = %+v (%v)", r, err)
	}
	if r := get(c, base+"/livez"); r.code != 200 {
		t.Fatalf("liveness while draining = %+v", r)
	}
	if r := get(c, base+"/fast"); r.err != nil || r.code != 200 || r.body != "fast ok" {
		t.Fatalf("new request during the drain delay = %+v", r)
	}
	if reg.State() != health.StateDraining {
		t.Fatalf("state = %v", reg.State())
	}

	// End the drain delay: Shutdown begins and closes the listener.
	clock.WaitPending(1, nil)
	clock.Advance(time.Hour)
	await(t, shutdownBegan, "Shutdown began")
	if r := get(c, base+"/fast"); r.err == nil {
		t.Fatalf("new connection after Shutdown began = %+v, want refused", r)
	}
	select {
	case err := <-done:
		t.Fatalf("Run returned %v with a request in flight", err)
	default:
	}
	close(releaseSlow)
	if r := await(t, slow, "in-flight response"); r.err != nil || r.code != 200 || r.body != "slow ok" {
		t.Fatalf("in-flight request = %+v", r)
	}
	if err := waitRun(t, done); err != nil {
		t.Fatalf("Run = %v", err)
	}
	want := []string{"drain hook", "slow done", "close c", "close b", "close a"}
	if got := ev.get(); !reflect.DeepEqual(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	if reg.State() != health.StateStopped {
		t.Fatalf("state = %v", reg.State())
	}
}

// Past the shutdown timeout the connections are cut and Run says so; the
// closers still run. Real clock, tens of milliseconds.
func TestLifecycleShutdownTimeout(t *testing.T) {
	reg := newRegistryReal(t)
	entered := make(chan struct{})
	release := make(chan struct{})
	defer close(release)
	l := listenLocal(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
	})}
	var ev events
	signal, sig := manualSignal()
	lc := health.Lifecycle{
		Registry:        reg,
		Servers:         []health.Server{{HTTP: srv, Listener: l}},
		DrainDelay:      -1,
		ShutdownTimeout: 30 * time.Millisecond,
		CloseTimeout:    30 * time.Millisecond,
		Signal:          signal,
		Closers:         recordingClosers(&ev, "client"),
	}
	done := make(chan error, 1)
	go func() { done <- lc.Run(context.Background()) }()
	term := await(t, sig, "signal source set up")
	c := newClient(t)
	stuck := make(chan reply, 1)
	go func() { stuck <- get(c, "http://"+l.Addr().String()+"/") }()
	await(t, entered, "request in flight")
	term()
	err := waitRun(t, done)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "shutting down") {
		t.Fatalf("Run = %v, want the shutdown deadline", err)
	}
	if r := await(t, stuck, "cut request"); r.err == nil {
		t.Fatalf("request past the deadline = %+v, want its connection cut", r)
	}
	if got := ev.get(); !reflect.DeepEqual(got, []string{"close client"}) {
		t.Fatalf("events = %v", got)
	}
}

func newRegistryReal(t *testing.T) *health.Registry {
	t.Helper()
	r, err := health.NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestLifecycleValidation(t *testing.T) {
	var ev events
	closers := recordingClosers(&ev, "x")
	tests := []struct {
		name string
		lc   health.Lifecycle
		want string
	}{
		{"drain too long for the default grace period",
			health.Lifecycle{DrainDelay: 20 * time.Second},
			"drain delay 20s + shutdown timeout 10s + close timeout 5s = 35s exceeds the termination grace period 30s"},
		{"short grace period",
			health.Lifecycle{GracePeriod: 10 * time.Second, DrainDelay: time.Second, ShutdownTimeout: 5 * time.Second, CloseTimeout: 5 * time.Second},
			"drain delay 1s + shutdown timeout 5s + close timeout 5s = 11s exceeds the termination grace period 10s"},
		{"negative shutdown timeout", health.Lifecycle{ShutdownTimeout: -1}, "negative shutdown timeout"},
		{"negative grace period", health.Lifecycle{GracePeriod: -1}, "negative grace period"},
		{"nil http server", health.Lifecycle{Servers: []health.Server{{}}}, "server 0: nil http.Server"},
		{"nil closer", health.Lifecycle{Closers: []health.Closer{{Name: "db"}}}, `closer 0 ("db"): nil Close`},
		{"nil start hook", health.Lifecycle{OnStarted: []func(context.Context) error{nil}}, "OnStarted hook 0 is nil"},
		{"nil drain hook", health.Lifecycle{OnDrain: []func(context.Context) error{nil}}, "OnDrain hook 0 is nil"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := newRegistryReal(t)
			tt.lc.Registry = reg
			if tt.lc.Closers == nil {
				tt.lc.Closers = closers
			}
			err := tt.lc.Run(t.Context())
			if !errors.Is(err, health.ErrInvalidLifecycle) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Run = %v, want ErrInvalidLifecycle with %q", err, tt.want)
			}
			if reg.State() != health.StateStarting {
				t.Fatalf("state = %v after a rejected lifecycle", reg.State())
			}
		})
	}
	if err := (health.Lifecycle{}).Run(t.Context()); !errors.Is(err, health.ErrInvalidLifecycle) {
		t.Fatalf("nil registry: Run = %v", err)
	}
	if got := ev.get(); len(got) != 0 {
		t.Fatalf("closers ran for a rejected lifecycle: %v", got)
	}
	// Exactly the grace period is allowed.
	reg := newRegistryReal(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	lc := health.Lifecycle{Registry: reg, DrainDelay: time.Second, ShutdownTimeout: time.Second, CloseTimeout: time.Second, GracePeriod: 3 * time.Second}
	if err := lc.Run(ctx); err != nil {
		t.Fatalf("Run at exactly the grace period = %v", err)
	}
	// A registry runs one lifecycle.
	if err := lc.Run(t.Context()); !errors.Is(err, health.ErrInvalidLifecycle) {
		t.Fatalf("second Run = %v", err)
	}
}

// Cancelling ctx stops the service cleanly: Run returns nil after draining
// and closing. Default signal source, real clock, tens of milliseconds.
func TestLifecycleCleanExitOnContextCancel(t *testing.T) {
	reg := newRegistryReal(t)
	var ev events
	l := listenLocal(t)
	mux := http.NewServeMux()
	mux.Handle("/readyz", reg.Handler(health.Readiness))
	lc := health.Lifecycle{
		Registry:        reg,
		Servers:         []health.Server{{HTTP: &http.Server{Handler: mux}, Listener: l}},
		DrainDelay:      20 * time.Millisecond,
		ShutdownTimeout: 50 * time.Millisecond,
		CloseTimeout:    50 * time.Millisecond,
		Closers:         recordingClosers(&ev, "telemetry", "consul"),
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- lc.Run(ctx) }()
	waitFor(t, newClient(t), "http://"+l.Addr().String()+"/readyz", 200)
	cancel()
	if err := waitRun(t, done); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if got, want := ev.get(), []string{"close consul", "close telemetry"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	if reg.State() != health.StateStopped {
		t.Fatalf("state = %v", reg.State())
	}
}

// SIGTERM, through the default signal.NotifyContext, stops the service.
func TestLifecycleSIGTERM(t *testing.T) {
	reg := newRegistryReal(t)
	var ev events
	lc := health.Lifecycle{
		Registry:   reg,
		Servers:    []health.Server{{HTTP: &http.Server{Handler: http.NotFoundHandler()}, Listener: listenLocal(t)}},
		DrainDelay: -1,
		OnStarted: []func(context.Context) error{func(ctx context.Context) error {
			// Run has installed its signal handler before the hooks run.
			return syscall.Kill(os.Getpid(), syscall.SIGTERM)
		}},
		Closers: recordingClosers(&ev, "db"),
	}
	done := make(chan error, 1)
	go func() { done <- lc.Run(context.Background()) }()
	if err := waitRun(t, done); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if got := ev.get(); !reflect.DeepEqual(got, []string{"close db"}) {
		t.Fatalf("events = %v", got)
	}
}

// A port in use ends Run with the listen error; the closers run and the
// listeners Run was given are closed.
func TestLifecycleListenError(t *testing.T) {
	busy := listenLocal(t)
	defer busy.Close()
	given := listenLocal(t)
	var ev events
	lc := health.Lifecycle{
		Registry: newRegistryReal(t),
		Servers: []health.Server{
			{HTTP: &http.Server{}, Listener: given},
			{HTTP: &http.Server{Addr: busy.Addr().String()}},
		},
		Closers: recordingClosers(&ev, "db"),
	}
	err := lc.Run(t.Context())
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), busy.Addr().String()) {
		t.Fatalf("Run = %v, want address in use", err)
	}
	if _, err := given.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("given listener Accept = %v, want closed", err)
	}
	if got := ev.get(); !reflect.DeepEqual(got, []string{"close db"}) {
		t.Fatalf("events = %v", got)
	}
	if s := lc.Registry.State(); s != health.StateStopped {
		t.Fatalf("state = %v", s)
	}
}

// errListener fails every Accept with err.
type errListener struct {
	net.Listener
	err error
}

func (l errListener) Accept() (net.Conn, error) { return nil, l.err }

// A server that fails while serving stops the whole service with its error.
func TestLifecycleServeError(t *testing.T) {
	errBoom := errors.New("accept: boom")
	l := listenLocal(t)
	defer l.Close()
	other := listenLocal(t)
	var ev events
	lc := health.Lifecycle{
		Registry:   newRegistryReal(t),
		DrainDelay: -1,
		Servers: []health.Server{
			{HTTP: &http.Server{Handler: http.NotFoundHandler()}, Listener: other},
			{HTTP: &http.Server{}, Listener: errListener{Listener: l, err: errBoom}},
		},
		Closers: recordingClosers(&ev, "db"),
	}
	done := make(chan error, 1)
	go func() { done <- lc.Run(t.Context()) }()
	err := waitRun(t, done)
	if !errors.Is(err, errBoom) || !strings.Contains(err.Error(), "serving on "+l.Addr().String()) {
		t.Fatalf("Run = %v, want the serve error", err)
	}
	if got := ev.get(); !reflect.DeepEqual(got, []string{"close db"}) {
		t.Fatalf("events = %v", got)
	}
	if _, err := other.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("other server's listener Accept = %v, want closed by Shutdown", err)
	}
}

// The startup view fails until the start hooks are done; a hook error stops
// the service without a drain delay (no traffic ever came).
func TestLifecycleStartHookError(t *testing.T) {
	reg := newRegistryReal(t)
	errMigrate := errors.New("schema migration: lock held")
	var ev events
	lc := health.Lifecycle{
		Registry:   reg,
		Servers:    []health.Server{{HTTP: &http.Server{Handler: http.NotFoundHandler()}, Listener: listenLocal(t)}},
		DrainDelay: time.Hour / 2, ShutdownTimeout: time.Hour / 4, CloseTimeout: time.Hour / 4, GracePeriod: time.Hour,
		OnStarted: []func(context.Context) error{
			func(ctx context.Context) error {
				for _, v := range []health.View{health.Startup, health.Readiness} {
					if resp := reg.Report(ctx, v); resp.Status != health.StatusFail || resp.Output != "starting" {
						ev.add(v.String() + " passed while starting")
					}
				}
				ev.add("hook 1")
				return nil
			},
			func(ctx context.Context) error { return errMigrate },
			func(ctx context.Context) error { ev.add("hook 3"); return nil },
		},
		Closers: recordingClosers(&ev, "db"),
	}
	done := make(chan error, 1)
	go func() { done <- lc.Run(context.Background()) }()
	err := waitRun(t, done) // would block for the 30 minute drain delay
	if !errors.Is(err, errMigrate) || !strings.Contains(err.Error(), "starting") {
		t.Fatalf("Run = %v", err)
	}
	if got, want := ev.get(), []string{"hook 1", "close db"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
}

// A start hook cut short by the signal is no error.
func TestLifecycleSignalDuringStartHook(t *testing.T) {
	signal, sig := manualSignal()
	lc := health.Lifecycle{
		Registry: newRegistryReal(t),
		Signal:   signal,
		OnStarted: []func(context.Context) error{func(ctx context.Context) error {
			(<-sig)()
			<-ctx.Done()
			return ctx.Err()
		}},
	}
	if err := lc.Run(t.Context()); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if s := lc.Registry.State(); s != health.StateStopped {
		t.Fatalf("state = %v", s)
	}
}

// Drain and close errors are joined; every closer runs despite the others.
func TestLifecycleErrorsJoined(t *testing.T) {
	errConsul := errors.New("consul: 500")
	errFlush := errors.New("otlp: unavailable")
	var ev events
	signal, sig := manualSignal()
	lc := health.Lifecycle{
		Registry:   newRegistryReal(t),
		DrainDelay: -1,
		Signal:     signal,
		OnDrain:    []func(context.Context) error{func(context.Context) error { return errConsul }},
		Closers: []health.Closer{
			{Name: "mongo", Close: func(context.Context) error { ev.add("mongo"); return nil }},
			{Name: "telemetry", Close: func(context.Context) error { ev.add("telemetry"); return errFlush }},
			{Close: func(context.Context) error { ev.add("anonymous"); panic("oops") }},
		},
	}
	go func() { (<-sig)() }()
	err := lc.Run(t.Context())
	if !errors.Is(err, errConsul) || !errors.Is(err, errFlush) {
		t.Fatalf("Run = %v", err)
	}
	for _, want := range []string{"drain hook: consul: 500", "closing telemetry: otlp: unavailable", "closing closer 2: panic: oops"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Run error %q lacks %q", err, want)
		}
	}
	if got, want := ev.get(), []string{"anonymous", "telemetry", "mongo"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("close order = %v, want %v", got, want)
	}
}

// A server with a TLSConfig serves TLS on its listener.
func TestLifecycleTLS(t *testing.T) {
	certSrc := httptest.NewUnstartedServer(http.NotFoundHandler())
	certSrc.StartTLS()
	certs := certSrc.TLS.Certificates
	client := certSrc.Client() // trusts the test certificate
	certSrc.Close()

	reg := newRegistryReal(t)
	l := listenLocal(t)
	signal, sig := manualSignal()
	lc := health.Lifecycle{
		Registry:   reg,
		Servers:    []health.Server{{HTTP: &http.Server{Handler: reg.Handler(health.Readiness), TLSConfig: &tls.Config{Certificates: certs}}, Listener: l}},
		DrainDelay: -1,
		Signal:     signal,
	}
	done := make(chan error, 1)
	go func() { done <- lc.Run(context.Background()) }()
	term := await(t, sig, "signal source set up")
	waitFor(t, client, "https://"+l.Addr().String()+"/", 200)
	client.CloseIdleConnections()
	term()
	if err := waitRun(t, done); err != nil {
		t.Fatalf("Run = %v", err)
	}
}

// A context that has already ended runs no start hook and exits cleanly.
func TestLifecycleCancelledBeforeStart(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	var ev events
	lc := health.Lifecycle{
		Registry:  newRegistryReal(t),
		Servers:   []health.Server{{HTTP: &http.Server{}, Listener: listenLocal(t)}},
		OnStarted: []func(context.Context) error{func(context.Context) error { ev.add("hook"); return nil }},
		Closers:   recordingClosers(&ev, "db"),
	}
	if err := lc.Run(ctx); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if got := ev.get(); !reflect.DeepEqual(got, []string{"close db"}) {
		t.Fatalf("events = %v", got)
	}
}

// TestLifecycleHungDrainHookKeepsSchedule: an OnDrain hook that hangs (it
// sets the Consul check critical through an agent that does not answer)
// must not hold back Shutdown past the drain delay. Before, Run waited for
// the hooks, which may take until the end of the shutdown timeout, and then
// called Shutdown with its deadline already past: the listener stayed open
// after the drain delay and every request in flight then was cut at once.
func TestLifecycleHungDrainHookKeepsSchedule(t *testing.T) {
	clock := health.NewFakeClock(t0)
	reg := newRegistry(t, clock)
	l := listenLocal(t)
	srv := &http.Server{Handler: http.NotFoundHandler()}
	shutdownBegan := make(chan struct{})
	srv.RegisterOnShutdown(func() { close(shutdownBegan) })
	hookEntered := make(chan struct{})
	signal, sig := manualSignal()
	lc := health.Lifecycle{
		Registry:        reg,
		Servers:         []health.Server{{HTTP: srv, Listener: l}},
		DrainDelay:      time.Hour, // on the fake clock
		ShutdownTimeout: time.Hour,
		CloseTimeout:    time.Hour,
		GracePeriod:     3 * time.Hour,
		Signal:          signal,
		OnDrain: []func(context.Context) error{func(ctx context.Context) error {
			close(hookEntered)
			<-ctx.Done()
			return context.Cause(ctx)
		}},
	}
	done := make(chan error, 1)
	go func() { done <- lc.Run(context.Background()) }()
	term := await(t, sig, "signal source set up")
	c := newClient(t)
	waitFor(t, c, "http://"+l.Addr().String()+"/readyz", 404)
	term()
	await(t, hookEntered, "drain hook")
	clock.WaitPending(1, nil) // the hook's deadline
	clock.Advance(time.Hour)  // the drain delay is over
	await(t, shutdownBegan, "Shutdown at the end of the drain delay while a drain hook hangs")
	clock.Advance(time.Hour) // the hook's deadline
	err := waitRun(t, done)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "drain hook") {
		t.Fatalf("Run = %v, want the drain hook's deadline", err)
	}
}

// secondSignalChild, set in the environment, makes
// TestLifecycleSecondSignalKills run the service it watches.
const secondSignalChild = "ACTIVEKIT_HEALTH_SECOND_SIGNAL_CHILD"

// A second SIGTERM while the service stops is an operator who wants it
// down now: the process dies at once (Go's default for the signal), rather
// than the signal being swallowed while the drain delay runs its course. The
// service runs in a child process, which signals itself twice: once to stop,
// once from a drain hook.
func TestLifecycleSecondSignalKills(t *testing.T) {
	if os.Getenv(secondSignalChild) == "1" {
		lc := health.Lifecycle{
			Registry:        newRegistryReal(t),
			Servers:         []health.Server{{HTTP: &http.Server{Handler: http.NotFoundHandler()}, Listener: listenLocal(t)}},
			DrainDelay:      3 * time.Second,
			ShutdownTimeout: time.Second,
			CloseTimeout:    time.Second,
			OnStarted: []func(context.Context) error{func(context.Context) error {
				return syscall.Kill(os.Getpid(), syscall.SIGTERM)
			}},
			OnDrain: []func(context.Context) error{func(context.Context) error {
				return syscall.Kill(os.Getpid(), syscall.SIGTERM)
			}},
		}
		err := lc.Run(context.Background())
		fmt.Printf("Run returned %v\n", err)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestLifecycleSecondSignalKills$", "-test.count=1")
	cmd.Env = append(os.Environ(), secondSignalChild+"=1")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("child: %v, want it killed by the second SIGTERM; output:\n%s", err, out)
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("child ended with %v, want killed by SIGTERM; output:\n%s", err, out)
	}
}

// CheckShutdownBudget reads zero as the default and a negative drain delay
// as none, once: a Lifecycle whose durations it accepts starts, and one
// whose durations it refuses does not, with the same error.
func TestCheckShutdownBudget(t *testing.T) {
	for _, tc := range []struct {
		name                          string
		drain, shutdown, close, grace time.Duration
		ok                            bool
	}{
		{name: "defaults", ok: true},
		{name: "no drain delay", drain: -time.Nanosecond, shutdown: 5 * time.Second, close: 2 * time.Second, grace: 7 * time.Second, ok: true},
		{name: "zero drain is the default", shutdown: 5 * time.Second, close: 2 * time.Second, grace: 7 * time.Second},
		{name: "exactly the grace period", drain: time.Second, shutdown: time.Second, close: time.Second, grace: 3 * time.Second, ok: true},
		{name: "over", drain: 20 * time.Second, grace: 25 * time.Second},
		{name: "negative shutdown", shutdown: -time.Second},
		{name: "negative close", close: -time.Second},
		{name: "negative grace", grace: -time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := health.CheckShutdownBudget(tc.drain, tc.shutdown, tc.close, tc.grace)
			if (err == nil) != tc.ok {
				t.Fatalf("CheckShutdownBudget: %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, health.ErrInvalidLifecycle) {
				t.Fatalf("CheckShutdownBudget: %v, not ErrInvalidLifecycle", err)
			}
			r, nerr := health.NewRegistry()
			if nerr != nil {
				t.Fatal(nerr)
			}
			lc := &health.Lifecycle{Registry: r, DrainDelay: tc.drain, ShutdownTimeout: tc.shutdown, CloseTimeout: tc.close, GracePeriod: tc.grace}
			ctx, cancel := context.WithCancel(t.Context())
			cancel() // Run returns at once after its checks
			runErr := lc.Run(ctx)
			if errors.Is(runErr, health.ErrInvalidLifecycle) != !tc.ok {
				t.Fatalf("Run: %v; CheckShutdownBudget: %v", runErr, err)
			}
			if err != nil && runErr.Error() != err.Error() {
				t.Fatalf("Run: %v; CheckShutdownBudget: %v", runErr, err)
			}
		})
	}
}
