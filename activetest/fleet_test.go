package activetest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/activekit/activekit/activetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// answer returns a handler that answers its slot number.
func answer(i int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, i)
	})
}

// get sends GET url with c and returns the status, the serving slot (-1
// when none) and the body.
func get(t *testing.T, c *http.Client, url string) (int, int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	slot := -1
	if h := resp.Header.Get(activetest.InstanceHeader); h != "" {
		slot, _ = strconv.Atoi(h)
	}
	return resp.StatusCode, slot, string(b)
}

// getAsync sends GET url with c on another goroutine, and sends its status
// on the channel returned, or 0 after reporting the error.
func getAsync(t *testing.T, c *http.Client, url string) <-chan int {
	res := make(chan int, 1)
	go func() {
		resp, err := c.Get(url)
		if err != nil {
			t.Errorf("GET %s: %v", url, err)
			res <- 0
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		res <- resp.StatusCode
	}()
	return res
}

// getOK is a load that sends GET url and fails on any answer but a 200.
func getOK(url string) activetest.WorkFunc {
	return func(ctx context.Context, _ int, c *http.Client) error {
		return okResponse(c.Get(url))
	}
}

// okResponse reads and closes the body of a call's response, and returns
// the call's error, or one for any answer but a 200.
func okResponse(resp *http.Response, err error) error {
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return nil
}

// rollingDrain drains and restarts the three instances of f in turn, 15
// times in all, each after 50 more calls of load succeeded.
func rollingDrain(ctx context.Context, t *testing.T, f *activetest.Fleet, load *activetest.Load) {
	t.Helper()
	for k := range 15 {
		if err := load.WaitOK(ctx, load.Report().OK+50); err != nil {
			t.Fatal(err)
		}
		if err := f.Drain(k%3, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		f.Restart(k % 3)
	}
}

// eventually polls cond every 5ms until it holds, or fails after 5s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(5 * time.Second)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("%s: not within 5s", what)
		}
	}
}

// blocker is a handler that holds each request until released or until
// its context ends, and reports how it ended.
type blocker struct {
	entered chan string   // receives the request's id as it starts
	release chan struct{} // closed to let requests finish
	ended   chan error    // receives nil when released, ctx.Err() when cut
	calls   sync.Map      // id → *atomic.Int32
}

func newBlocker() *blocker {
	return &blocker{entered: make(chan string, 16), release: make(chan struct{}), ended: make(chan error, 16)}
}

func (b *blocker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	n, _ := b.calls.LoadOrStore(id, new(atomic.Int32))
	n.(*atomic.Int32).Add(1)
	if r.URL.Query().Get("block") == "" {
		fmt.Fprint(w, "quick")
		return
	}
	b.entered <- id
	select {
	case <-b.release:
		b.ended <- nil
		fmt.Fprint(w, "released")
	case <-r.Context().Done():
		b.ended <- r.Context().Err()
	}
}

func (b *blocker) callsOf(id string) int32 {
	n, ok := b.calls.Load(id)
	if !ok {
		return 0
	}
	return n.(*atomic.Int32).Load()
}

func TestRoundRobin(t *testing.T) {
	f := activetest.NewFleet(t, 3, answer)
	c := f.Client()
	for k := range 9 {
		code, slot, body := get(t, c, f.URL())
		if code != http.StatusOK || slot != k%3 || body != strconv.Itoa(k%3) {
			t.Fatalf("request %d: %d from slot %d %q, want 200 from slot %d", k, code, slot, body, k%3)
		}
	}
	for i := range 3 {
		if n := f.Served(i); n != 3 {
			t.Errorf("Served(%d) = %d, want 3", i, n)
		}
	}
	if live := f.Live(); !slices.Equal(live, []int{0, 1, 2}) {
		t.Errorf("Live() = %v", live)
	}
}

func TestRandom(t *testing.T) {
	f := activetest.NewFleet(t, 3, answer, activetest.WithPolicy(activetest.Random))
	c := f.Client()
	for range 150 {
		if code, _, _ := get(t, c, f.URL()); code != http.StatusOK {
			t.Fatalf("status %d", code)
		}
	}
	// Each slot gets about 50; below 15 has a probability near 1e-10.
	for i := range 3 {
		if n := f.Served(i); n < 15 {
			t.Errorf("Served(%d) = %d of 150 at random", i, n)
		}
	}
}

// Under concurrent traffic, a killed instance gets no request once Kill
// has returned, and the others take all of it.
func TestKillSkipsInstance(t *testing.T) {
	f := activetest.NewFleet(t, 3, answer)
	ctx := t.Context()
	load := f.Start(ctx, 8, getOK(f.URL()))
	if err := load.WaitOK(ctx, 100); err != nil {
		t.Fatal(err)
	}
	f.Kill(1)
	after := f.Served(1)
	if live := f.Live(); !slices.Equal(live, []int{0, 2}) {
		t.Errorf("Live() after Kill(1) = %v", live)
	}
	before0, before2 := f.Served(0), f.Served(2)
	ok := load.Report().OK
	if err := load.WaitOK(ctx, ok+300); err != nil {
		t.Fatal(err)
	}
	rep := load.Stop()
	if n := f.Served(1); n != after {
		t.Errorf("slot 1 served %d requests after Kill returned", n-after)
	}
	if f.Served(0) == before0 || f.Served(2) == before2 {
		t.Errorf("the live instances did not share the traffic: %d, %d more", f.Served(0)-before0, f.Served(2)-before2)
	}
	// The handler answers at once: a request could only fail if it was
	// in flight on slot 1 as it was killed.
	if rep.Failed > 8 {
		t.Errorf("%v", rep)
	}
	t.Log(rep)
}

// Kill cuts the requests in flight: the client gets a 502, the handler's
// context ends, and the request is not sent again to another instance
// (even a GET on a reused connection, which http.Transport would replay).
func TestKillFailsInFlight(t *testing.T) {
	b := newBlocker()
	f := activetest.NewFleet(t, 2, func(int) http.Handler { return b })
	c := f.Client()
	// Open a keep-alive connection to each instance, so that the blocked
	// request goes over a reused one.
	for range 2 {
		if code, _, _ := get(t, c, f.URL()+"?id=warm"); code != http.StatusOK {
			t.Fatalf("warm-up: %d", code)
		}
	}
	type result struct {
		code, slot int
	}
	res := make(chan result, 1)
	go func() {
		resp, err := c.Get(f.URL() + "?id=x&block=1")
		if err != nil {
			t.Errorf("blocked request: %v", err)
			res <- result{}
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		slot, _ := strconv.Atoi(resp.Header.Get(activetest.InstanceHeader))
		res <- result{resp.StatusCode, slot}
	}()
	<-b.entered
	f.Kill(0) // round-robin: the third request went to slot 0
	if err := <-b.ended; !errors.Is(err, context.Canceled) {
		t.Errorf("the killed handler's context: %v, want canceled", err)
	}
	r := <-res
	if r.code != http.StatusBadGateway {
		t.Errorf("request in flight on a killed instance: %d, want 502", r.code)
	}
	if n := b.callsOf("x"); n != 1 {
		t.Errorf("the request reached a handler %d times, want 1 (sent again after it was cut)", n)
	}
	if code, slot, _ := get(t, c, f.URL()+"?id=after"); code != http.StatusOK || slot != 1 {
		t.Errorf("after the kill: %d from slot %d, want 200 from 1", code, slot)
	}
}

// Drain takes the instance out of the balancer at once and lets the
// request in flight finish.
func TestDrainLetsInFlightFinish(t *testing.T) {
	b := newBlocker()
	f := activetest.NewFleet(t, 2, func(int) http.Handler { return b })
	c := f.Client()
	res := getAsync(t, c, f.URL()+"?id=x&block=1")
	<-b.entered // on slot 0
	drained := make(chan error, 1)
	go func() { drained <- f.Drain(0, 5*time.Second) }()
	eventually(t, "slot 0 out of the balancer", func() bool { return slices.Equal(f.Live(), []int{1}) })
	for range 4 {
		if code, slot, _ := get(t, c, f.URL()+"?id=during"); code != http.StatusOK || slot != 1 {
			t.Errorf("during the drain: %d from slot %d, want 200 from 1", code, slot)
		}
	}
	select {
	case err := <-drained:
		t.Fatalf("Drain returned %v with a request in flight", err)
	default:
	}
	close(b.release)
	if err := <-b.ended; err != nil {
		t.Errorf("the draining handler was cut: %v", err)
	}
	if code := <-res; code != http.StatusOK {
		t.Errorf("request in flight during the drain: %d, want 200", code)
	}
	if err := <-drained; err != nil {
		t.Errorf("Drain: %v", err)
	}
}

// A request that outlives the drain timeout is cut, and Drain says so.
func TestDrainTimeout(t *testing.T) {
	b := newBlocker()
	f := activetest.NewFleet(t, 1, func(int) http.Handler { return b })
	c := f.Client()
	res := getAsync(t, c, f.URL()+"?id=x&block=1")
	<-b.entered
	if err := f.Drain(0, 50*time.Millisecond); err == nil {
		t.Error("Drain returned nil with a request still running")
	}
	if err := <-b.ended; !errors.Is(err, context.Canceled) {
		t.Errorf("the handler: %v, want canceled", err)
	}
	if code := <-res; code != http.StatusBadGateway {
		t.Errorf("cut request: %d, want 502", code)
	}
	if code, _, _ := get(t, c, f.URL()); code != http.StatusServiceUnavailable {
		t.Errorf("no instance live: %d, want 503", code)
	}
}

// Restart brings a new instance, from newInstance(i), on a new listener;
// the balancer uses it; the old one's handler is closed.
func TestRestart(t *testing.T) {
	var mu sync.Mutex
	made := map[int]int{}
	var closed atomic.Int32
	f := activetest.NewFleet(t, 2, func(i int) http.Handler {
		mu.Lock()
		defer mu.Unlock()
		made[i]++
		return &closingHandler{Handler: answer(i), closed: &closed}
	})
	c := f.Client()
	f.Kill(1)
	eventually(t, "the killed handler closed", func() bool { return closed.Load() == 1 })
	for range 4 {
		if code, slot, _ := get(t, c, f.URL()); code != http.StatusOK || slot != 0 {
			t.Fatalf("with slot 1 down: %d from %d", code, slot)
		}
	}
	f.Restart(1)
	// The new listener may get the old one's port back from the kernel.
	if addr := f.Addr(1); addr == "" {
		t.Errorf("restarted on %q", addr)
	}
	if live := f.Live(); !slices.Equal(live, []int{0, 1}) {
		t.Errorf("Live() after Restart(1) = %v", live)
	}
	served := map[int]int{}
	for range 4 {
		code, slot, _ := get(t, c, f.URL())
		if code != http.StatusOK {
			t.Fatalf("after restart: %d", code)
		}
		served[slot]++
	}
	if served[0] != 2 || served[1] != 2 {
		t.Errorf("after restart, served %v, want 2 each", served)
	}
	mu.Lock()
	defer mu.Unlock()
	if made[0] != 1 || made[1] != 2 {
		t.Errorf("newInstance calls: %v, want 0:1 1:2", made)
	}
}

type closingHandler struct {
	http.Handler
	closed *atomic.Int32
}

func (h *closingHandler) Close() error {
	h.closed.Add(1)
	return nil
}

// A path that refuses connections: the balancer sends the requests to
// another instance, unless connect retries are off.
func TestRefuseFault(t *testing.T) {
	t.Run("retried", func(t *testing.T) {
		f := activetest.NewFleet(t, 3, answer)
		f.SetFault(0, activetest.Fault{Refuse: true})
		c := f.Client()
		for k := range 12 {
			if code, slot, _ := get(t, c, f.URL()); code != http.StatusOK || slot == 0 {
				t.Fatalf("request %d: %d from slot %d", k, code, slot)
			}
		}
		if n := f.Served(0); n != 0 {
			t.Errorf("slot 0 behind a refusing path served %d", n)
		}
		f.SetFault(0, activetest.Fault{})
		served := map[int]bool{}
		for range 3 {
			_, slot, _ := get(t, c, f.URL())
			served[slot] = true
		}
		if !served[0] {
			t.Errorf("healed path: slot 0 served nothing in a round")
		}
	})
	t.Run("no retries", func(t *testing.T) {
		f := activetest.NewFleet(t, 2, answer, activetest.WithConnectRetries(0))
		f.SetFault(1, activetest.Fault{Refuse: true})
		c := f.Client()
		got := map[int]int{}
		for range 4 {
			code, _, _ := get(t, c, f.URL())
			got[code]++
		}
		if got[http.StatusOK] != 2 || got[http.StatusServiceUnavailable] != 2 {
			t.Errorf("statuses %v, want 2×200 and 2×503", got)
		}
	})
}

func TestLatencyFault(t *testing.T) {
	f := activetest.NewFleet(t, 1, answer)
	c := f.Client()
	const lat = 150 * time.Millisecond
	f.SetFault(0, activetest.Fault{Latency: lat})
	start := time.Now()
	if code, _, _ := get(t, c, f.URL()); code != http.StatusOK {
		t.Fatalf("status %d", code)
	}
	if d := time.Since(start); d < lat {
		t.Errorf("request took %v with %v latency", d, lat)
	}
}

// A reset path: the instance handles the request, the client gets a 502,
// and the balancer does not send the request again.
func TestResetFault(t *testing.T) {
	b := newBlocker()
	f := activetest.NewFleet(t, 2, func(int) http.Handler { return b })
	f.SetFault(0, activetest.Fault{ResetRate: 1})
	c := f.Client()
	codes := map[int]int{}
	for k := range 4 {
		code, _, _ := get(t, c, f.URL()+"?id="+strconv.Itoa(k))
		codes[code]++
	}
	if codes[http.StatusOK] != 2 || codes[http.StatusBadGateway] != 2 {
		t.Errorf("statuses %v, want 2×200 (slot 1) and 2×502 (slot 0)", codes)
	}
	for k := range 4 {
		if n := b.callsOf(strconv.Itoa(k)); n != 1 {
			t.Errorf("request %d handled %d times, want 1", k, n)
		}
	}
	if n := f.Served(0); n != 2 {
		t.Errorf("slot 0 handled %d requests, want 2 (reset after handling)", n)
	}
}

func TestSetFaultInvalid(t *testing.T) {
	rec := &recordingTB{TB: t}
	g := activetest.NewFleet(rec, 1, answer)
	g.SetFault(0, activetest.Fault{ResetRate: 2})
	g.SetFault(0, activetest.Fault{Latency: -1})
	g.Kill(5)
	if len(rec.errs) != 3 {
		t.Errorf("errors reported: %q, want 3", rec.errs)
	}
}

// recordingTB records the errors reported to it instead of failing.
type recordingTB struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (r *recordingTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recordingTB) Error(args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprint(args...))
}

// A POST whose connection failed to open is retried with its body whole;
// one that reached an instance is not.
func TestPostBodyRetried(t *testing.T) {
	var got sync.Map
	f := activetest.NewFleet(t, 2, func(i int) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			got.Store(string(b), i)
			fmt.Fprint(w, len(b))
		})
	})
	f.SetFault(0, activetest.Fault{Refuse: true})
	c := f.Client()
	for k := range 4 {
		body := fmt.Sprintf("body-%d", k)
		resp, err := c.Post(f.URL(), "text/plain", stringsReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != strconv.Itoa(len(body)) {
			t.Errorf("POST %d: %d %q", k, resp.StatusCode, b)
		}
		if slot, ok := got.Load(body); !ok || slot != 1 {
			t.Errorf("POST %d: body reached slot %v", k, slot)
		}
	}
}

func TestRunReport(t *testing.T) {
	f := activetest.NewFleet(t, 2, answer)
	ctx, cancel := context.WithCancel(t.Context())
	var calls atomic.Int64
	rep := f.Run(ctx, 4, func(ctx context.Context, worker int, c *http.Client) error {
		n := calls.Add(1)
		switch {
		case n >= 200:
			cancel()
			<-ctx.Done()
			return ctx.Err()
		case n%10 == 0:
			return errors.New("every tenth")
		}
		code, _, _ := get(t, c, f.URL())
		if code != http.StatusOK {
			return fmt.Errorf("status %d", code)
		}
		return nil
	})
	if rep.OK+rep.Failed+rep.Canceled != calls.Load() {
		t.Errorf("%v: counts do not add up to %d calls", rep, calls.Load())
	}
	if rep.Failed != 19 || rep.Errors["every tenth"] != 19 || len(rep.Errors) != 1 {
		t.Errorf("%v: want 19 failed, all 'every tenth'", rep)
	}
	if rep.Canceled < 1 {
		t.Errorf("%v: no call canceled", rep)
	}
}

// The cleanup stops every goroutine the fleet and its load started, and
// closes each instance's handler, killed and running alike.
func TestCleanupLeavesNoGoroutine(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	var closed atomic.Int32
	t.Run("fleet", func(t *testing.T) {
		f := activetest.NewFleet(t, 3, func(i int) http.Handler {
			return &closingHandler{Handler: answer(i), closed: &closed}
		})
		f.SetFault(2, activetest.Fault{ResetRate: 0.5, Latency: time.Millisecond})
		load := f.Start(t.Context(), 4, func(ctx context.Context, _ int, c *http.Client) error {
			resp, err := c.Get(f.URL())
			if err != nil {
				return err
			}
			resp.Body.Close()
			return nil
		})
		if err := load.WaitOK(t.Context(), 50); err != nil {
			t.Fatal(err)
		}
		f.Kill(0)
		f.Restart(0)
		f.Kill(1)
		// The load and the fleet stop in the cleanup, mid-traffic.
	})
	if n := closed.Load(); n != 4 {
		t.Errorf("%d handlers closed, want 4 (3 instances and a restart)", n)
	}
	goleak.VerifyNone(t, ignore)
}

func stringsReader(s string) io.Reader { return &onceReader{s: s} }

// onceReader is a reader the http client cannot rewind (no GetBody).
type onceReader struct{ s string }

func (r *onceReader) Read(p []byte) (int, error) {
	if r.s == "" {
		return 0, io.EOF
	}
	n := copy(p, r.s)
	r.s = r.s[n:]
	return n, nil
}

// Drain and Restart, one instance after the other, under load: no request
// fails. A request the balancer sent on a keep-alive connection just as
// the draining server closed it, idle, went to another instance: the
// server had not read it.
func TestRollingDrainNoFailure(t *testing.T) {
	f := activetest.NewFleet(t, 3, answer)
	ctx := t.Context()
	load := f.Start(ctx, 8, getOK(f.URL()))
	rollingDrain(ctx, t, f, load)
	if rep := load.Stop(); rep.Failed != 0 {
		t.Errorf("rolling drain: %v", rep)
	} else {
		t.Log(rep)
	}
}
