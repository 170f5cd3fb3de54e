package activetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httputil"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// InstanceHeader is the response header naming the slot (0 to n-1) of the
// instance that served the request.
const InstanceHeader = "Activetest-Instance"

// cleanupWait bounds how long the fleet's cleanup waits for handlers to
// return.
const cleanupWait = 10 * time.Second

// Fleet is n instances of a service behind a balancer. Its methods are safe
// for concurrent use, with each other and with traffic.
type Fleet struct {
	tb          testing.TB
	newInstance func(i int) http.Handler
	opts        options

	mu     sync.Mutex
	slots  []*slot
	closed bool
	up     map[*instance]struct{} // guarded by mu: instances not down

	last int // guarded by mu: the slot round-robin picked last

	front        *http.Server
	frontURL     string
	frontTracker tracker
	clients      *http.Transport // client → balancer

	bg sync.WaitGroup // serving goroutines, reapers and probers

	// probeCtx ends in the cleanup, stopping every prober.
	probeCtx   context.Context
	stopProbes context.CancelFunc

	attempts atomic.Uint64 // ids of the balancer's attempts (attemptHeader)
}

// slot is one position of the fleet: the instance in it now, the requests
// all its instances served and the fault on the path to it.
type slot struct {
	index  int
	served atomic.Int64
	cur    *instance // guarded by Fleet.mu
	fault  Fault     // guarded by Fleet.mu
}

// instance is one running copy of the service.
type instance struct {
	slot    *slot
	addr    string
	srv     *http.Server
	handler http.Handler
	tr      *http.Transport // balancer → instance, keep-alive
	resetTr *http.Transport // balancer → instance, for requests to reset
	probeTr *http.Transport // balancer → instance, for probes: no keep-alive
	// probed is closed once the instance entered the rotation, a probe
	// of it failed, or its prober stopped; nil without probing.
	probed  chan struct{}
	live    bool // guarded by Fleet.mu: in the balancer's rotation
	stopped bool // guarded by Fleet.mu: Kill or Drain has begun
	// down is set, under Fleet.mu, once the instance is killed or its
	// drain has ended: a Kill after it does nothing. A Kill during a
	// drain cuts it, as SIGKILL cuts a graceful shutdown.
	down bool
	// draining is set, under Fleet.mu, while Drain shuts the instance down
	// gracefully: it closes only connections it has read no request from,
	// so a request that failed on one may be sent elsewhere, unless its
	// handler took it (see attempts).
	draining bool
	handlers tracker
	// attempts holds, per attempt id (attemptHeader) the balancer sent,
	// who claimed it first: the instance's handler (handled) or the
	// balancer giving up on the attempt to send the request elsewhere
	// (abandoned). A request is retried only if the balancer wins.
	attempts  sync.Map
	closeOnce sync.Once

	hijackedMu sync.Mutex
	hijacked   map[net.Conn]struct{} // connections its handlers took over
}

// NewFleet starts n instances, the handler of instance i built by
// newInstance(i), each served by its own http.Server on its own loopback
// listener, and the balancer in front of them. Everything stops in
// t.Cleanup: the balancer and the instances close, the fleet waits for
// every handler to return, and a handler that implements io.Closer is then
// closed (each instance's once its own handlers returned, in no set order),
// as a process's clients would be on its exit.
//
// It starts one goroutine per instance and one for the balancer, all ended
// by the cleanup. A bad option or argument fails the test at once.
func NewFleet(t testing.TB, n int, newInstance func(i int) http.Handler, opts ...Option) *Fleet {
	t.Helper()
	o := options{policy: RoundRobin, connectRetries: DefaultConnectRetries}
	for _, opt := range opts {
		opt.apply(&o)
	}
	if o.probe != nil {
		p := o.probe.withDefaults()
		o.probe = &p
	}
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	if n < 1 {
		t.Fatalf("activetest: a fleet of %d instances", n)
	}
	if newInstance == nil {
		t.Fatal("activetest: nil newInstance")
	}
	f := &Fleet{
		last:        n - 1, // the first request goes to slot 0
		tb:          t,
		newInstance: newInstance,
		opts:        o,
		clients:     &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute},
		up:          map[*instance]struct{}{},
	}
	f.probeCtx, f.stopProbes = context.WithCancel(context.Background())
	f.slots = make([]*slot, n)
	for i := range n {
		f.slots[i] = &slot{index: i}
	}
	t.Cleanup(f.close)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("activetest: balancer: %v", err)
	}
	f.frontURL = "http://" + ln.Addr().String()
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = "instance" // set per attempt by the balancer
			pr.SetXForwarded()
		},
		Transport:    &balancer{f: f},
		ErrorHandler: proxyError,
		ErrorLog:     log.New(io.Discard, "", 0),
	}
	f.front = &http.Server{
		Handler:           f.frontTracker.wrap(proxy, nil),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	f.bg.Go(func() { _ = f.front.Serve(ln) })

	started := make([]*instance, n)
	for i := range n {
		in, err := f.start(f.slots[i])
		if err != nil {
			t.Fatal(err)
		}
		started[i] = in
	}
	for _, in := range started {
		in.waitProbed()
	}
	return f
}

// URL is the balancer's base URL (http://127.0.0.1:port): any HTTP client
// can send requests to it.
func (f *Fleet) URL() string { return f.frontURL }

// Client returns a new client of the balancer with a cookie jar of its
// own, as one user's browser: send it requests to URL() + path. Clients
// share the fleet's connections, closed by its cleanup.
func (f *Fleet) Client() *http.Client {
	jar, _ := cookiejar.New(nil) // never fails without options
	return &http.Client{Transport: f.clients, Jar: jar, Timeout: 30 * time.Second}
}

// Len is the number of slots, live or not.
func (f *Fleet) Len() int { return len(f.slots) }

// Live returns the slots whose instance the balancer sends requests to, in
// order. With WithReadinessProbe these are the slots whose instance its
// probes last put in the rotation: a killed or drained instance stays in
// until they fail.
func (f *Fleet) Live() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []int
	for _, s := range f.slots {
		if s.cur != nil && s.cur.live {
			out = append(out, s.index)
		}
	}
	return out
}

// Served returns how many requests reached the handlers of slot i, over
// all the instances it has run, readiness probes (WithReadinessProbe) not
// counted. A request is counted as the instance takes it, before its
// handler runs: once Kill(i) returns, or a Drain(i), no request is counted
// for, or reaches, the instance stopped.
func (f *Fleet) Served(i int) int64 {
	s := f.slot(i, "Served")
	if s == nil {
		return 0
	}
	return s.served.Load()
}

// Addr returns the address (127.0.0.1:port) of the instance in slot i, or
// of the last one if it is down, for requests that bypass the balancer.
func (f *Fleet) Addr(i int) string {
	s := f.slot(i, "Addr")
	if s == nil {
		return ""
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if s.cur == nil {
		return ""
	}
	return s.cur.addr
}

// Kill stops instance i abruptly, as a process dies: it leaves the
// balancer, its listener and every open connection close at once, and the
// requests in flight on it fail (their clients get a 502; their handlers'
// contexts end). Kill returns without waiting for the handlers; they are
// waited for, and the handler closed if it is an io.Closer, in the
// background and at the latest by the cleanup. Connections its handlers
// took over (http.Hijacker, a WebSocket) close too. Killing an instance
// being drained cuts the drain, as SIGKILL cuts a graceful shutdown;
// killing an instance that is down does nothing. With WithReadinessProbe
// the balancer learns of the kill only through its probes.
func (f *Fleet) Kill(i int) {
	s := f.slot(i, "Kill")
	if s == nil {
		return
	}
	f.mu.Lock()
	in := s.cur
	if in == nil || !f.takeDown(in) {
		f.mu.Unlock()
		return
	}
	f.mu.Unlock()
	f.kill(in)
}

// takeDown marks in down, out of the balancer (unless probes decide) and
// no longer draining, and reports whether it was up; f.mu is held.
func (f *Fleet) takeDown(in *instance) bool {
	if in.down {
		return false
	}
	in.stopped, in.draining, in.down = true, false, true
	if f.opts.probe == nil {
		in.live = false
	}
	delete(f.up, in)
	return true
}

// kill closes a stopped instance and reaps it in the background.
func (f *Fleet) kill(in *instance) {
	_ = in.srv.Close()
	in.closeConns()
	in.handlers.stop()
	f.bg.Go(func() {
		<-in.handlers.idle()
		f.closeHandler(in)
	})
}

// Drain stops instance i gracefully: it leaves the balancer at once, stops
// accepting connections, and the requests in flight on it may finish for up
// to timeout (http.Server.Shutdown); then it is closed like Kill. Drain
// returns when the instance has stopped: nil if every request in flight
// finished, else an error saying they were cut (by the timeout, or by a Kill
// or the cleanup during the drain). Handlers of hijacked connections (a
// WebSocket), which Shutdown does not wait for, count as requests in flight:
// a service that ends them on SIGTERM has no way to hear of the drain here,
// so they are cut at the timeout. Draining an instance that is down or
// draining does nothing.
//
// With WithReadinessProbe the instance does not leave the balancer at
// once: it leaves when its probes fail, as behind a balancer that knows
// only what it probes. Drain is then the end of a service's own drain
// sequence, the http.Server.Shutdown that health.Lifecycle runs after its
// drain delay: fail the instance's readiness first and wait, as the
// service does on SIGTERM, then call Drain.
func (f *Fleet) Drain(i int, timeout time.Duration) error {
	s := f.slot(i, "Drain")
	if s == nil {
		return nil
	}
	f.mu.Lock()
	in := s.cur
	if in == nil || in.stopped {
		f.mu.Unlock()
		return nil
	}
	in.stopped, in.draining = true, true
	if f.opts.probe == nil {
		in.live = false
	}
	f.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := f.shutdown(ctx, in)
	if err == nil {
		// Shutdown does not wait for the handlers of hijacked
		// connections.
		in.handlers.stop()
		select {
		case <-in.handlers.idle():
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	f.mu.Lock()
	killed := in.down
	cut := !killed && err != nil
	if cut {
		f.takeDown(in) // what is cut now may have been handled
	} else if !killed {
		// draining stays set: a request sent on a connection the server
		// closed idle still fails after the drain, unread.
		in.down = true
		delete(f.up, in)
	}
	f.mu.Unlock()
	switch {
	case killed:
		return fmt.Errorf("activetest: drain of instance %d: killed during the drain", s.index)
	case cut:
		f.kill(in)
		return fmt.Errorf("activetest: drain of instance %d: requests in flight after %v were cut: %w", s.index, timeout, err)
	}
	in.closeConns()
	f.closeHandler(in)
	return nil
}

// shutdown runs http.Server.Shutdown on in, closing meanwhile the
// balancer's idle connections to it once it is out of the rotation, as a
// balancer does to a server taken out: the server waits for a connection
// that never carried a request (one the transport dialed, then did not
// need) to be idle for 5s.
func (f *Fleet) shutdown(ctx context.Context, in *instance) error {
	out := func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return !in.live
	}
	if out() {
		in.tr.CloseIdleConnections()
	}
	stop := make(chan struct{})
	var closer sync.WaitGroup
	closer.Go(func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				if out() {
					in.tr.CloseIdleConnections()
				}
			case <-stop:
				return
			}
		}
	})
	defer closer.Wait()
	defer close(stop)
	return in.srv.Shutdown(ctx)
}

// Restart brings a new instance up in slot i, with the handler
// newInstance(i) returns, on a new listener, as a replacement process
// would come up; the balancer sends it requests as soon as Restart
// returns. An instance still running in the slot is killed first (Drain
// it before for a graceful replacement); one being drained drains on beside
// the replacement, as in a rolling update, out of the rotation. A failure
// to start fails the test.
//
// With WithReadinessProbe the new instance enters the rotation once its
// probes pass: Restart returns when it has entered it or one of its probes
// has failed, so that an instance ready at once is in the rotation by then
// (after SuccessThreshold probes), and one that is not gets no request
// until it is.
func (f *Fleet) Restart(i int) {
	s := f.slot(i, "Restart")
	if s == nil {
		return
	}
	f.mu.Lock()
	in := s.cur
	running := in != nil && !in.stopped && f.takeDown(in)
	f.mu.Unlock()
	if running {
		f.kill(in)
	}
	in, err := f.start(s)
	if err != nil {
		f.tb.Error(err)
		return
	}
	in.waitProbed()
}

// start runs a new instance in slot s, and its prober if probing is on. It
// returns nil and no error when another start of the slot won the race.
func (f *Fleet) start(s *slot) (*instance, error) {
	h := f.newInstance(s.index)
	if h == nil {
		return nil, fmt.Errorf("activetest: newInstance(%d) returned nil", s.index)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		closeIfCloser(h)
		return nil, fmt.Errorf("activetest: instance %d: %w", s.index, err)
	}
	in := &instance{slot: s, addr: ln.Addr().String(), handler: h, live: f.opts.probe == nil, hijacked: map[net.Conn]struct{}{}}
	in.tr = &http.Transport{
		DialContext:         f.dialer(s, in.addr, false),
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     time.Minute,
	}
	in.resetTr = &http.Transport{
		DialContext:       f.dialer(s, in.addr, true),
		DisableKeepAlives: true,
	}
	in.probeTr = &http.Transport{
		DialContext:       f.dialer(s, in.addr, false),
		DisableKeepAlives: true,
	}
	// Counted as the tracker admits it, so that a request is counted only
	// if it reaches the handler, and never after Kill or a drain stopped
	// the tracker; probes are not counted.
	served := in.claim(in.handlers.wrap(instanceHandler(s, h), &s.served))
	probed := in.handlers.wrap(instanceHandler(s, h), nil)
	in.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, ok := r.Header[probeHeader]; ok && f.opts.probe != nil {
				r.Header.Del(probeHeader)
				probed.ServeHTTP(w, r)
				return
			}
			served.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
		ConnState: func(c net.Conn, st http.ConnState) {
			if st == http.StateHijacked {
				in.hijack(c)
			}
		},
	}

	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		_ = ln.Close()
		closeIfCloser(h)
		return nil, errors.New("activetest: fleet already closed")
	}
	old := s.cur
	if old != nil && !old.stopped {
		// Restart raced with another start of the slot: the other one
		// wins, this instance is not needed.
		f.mu.Unlock()
		_ = ln.Close()
		closeIfCloser(h)
		return nil, nil
	}
	s.cur = in
	f.up[in] = struct{}{}
	f.bg.Go(func() { _ = in.srv.Serve(ln) })
	if f.opts.probe != nil {
		in.probed = make(chan struct{})
		f.bg.Go(func() { f.probeLoop(in) })
	}
	f.mu.Unlock()
	return in, nil
}

// instanceHandler names the slot in the response.
func instanceHandler(s *slot, h http.Handler) http.Handler {
	name := strconv.Itoa(s.index)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(InstanceHeader, name)
		h.ServeHTTP(w, r)
	})
}

// hijack records a connection a handler took over, which http.Server's
// Close and Shutdown leave open; one taken after the kill is closed at once.
func (in *instance) hijack(c net.Conn) {
	in.hijackedMu.Lock()
	defer in.hijackedMu.Unlock()
	if in.hijacked == nil {
		_ = c.Close()
		return
	}
	in.hijacked[c] = struct{}{}
}

// closeConns closes, once the instance has stopped, the connections its
// handlers took over and the balancer's idle ones to it.
func (in *instance) closeConns() {
	in.closeHijacked()
	in.tr.CloseIdleConnections()
	in.resetTr.CloseIdleConnections()
	in.probeTr.CloseIdleConnections()
}

// closeHijacked closes the connections the handlers took over, as a dying
// process's are.
func (in *instance) closeHijacked() {
	in.hijackedMu.Lock()
	defer in.hijackedMu.Unlock()
	for c := range in.hijacked {
		_ = c.Close()
	}
	in.hijacked = nil
}

// claim runs h for a request only if the balancer has not abandoned its
// attempt (sent the request to another instance instead).
func (in *instance) claim(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(attemptHeader)
		if id != "" {
			r.Header.Del(attemptHeader)
			if _, abandoned := in.attempts.LoadOrStore(id, attemptHandled); abandoned {
				in.attempts.Delete(id)
				return // its connection is gone
			}
		}
		h.ServeHTTP(w, r)
	})
}

// closeHandler closes, once, the handler of a stopped instance whose
// handlers have all returned.
func (f *Fleet) closeHandler(in *instance) {
	in.closeOnce.Do(func() {
		if c, ok := in.handler.(io.Closer); ok {
			if err := c.Close(); err != nil {
				f.tb.Errorf("activetest: closing instance %d: %v", in.slot.index, err)
			}
		}
	})
}

func closeIfCloser(h http.Handler) {
	if c, ok := h.(io.Closer); ok {
		_ = c.Close()
	}
}

// slot returns slot i, or fails the test and returns nil when there is
// none.
func (f *Fleet) slot(i int, method string) *slot {
	if i < 0 || i >= len(f.slots) {
		f.tb.Errorf("activetest: %s(%d) on a fleet of %d", method, i, len(f.slots))
		return nil
	}
	return f.slots[i]
}

// close stops everything: the t.Cleanup of NewFleet.
func (f *Fleet) close() {
	f.mu.Lock()
	f.closed = true
	var running []*instance
	for in := range f.up { // draining ones included
		running = append(running, in)
	}
	for _, in := range running {
		f.takeDown(in)
	}
	f.mu.Unlock()

	f.stopProbes()
	if f.front != nil {
		_ = f.front.Close()
		f.frontTracker.stop()
	}
	for _, in := range running {
		f.kill(in)
	}
	f.clients.CloseIdleConnections()

	done := make(chan struct{})
	go func() {
		f.bg.Wait()
		if f.front != nil {
			<-f.frontTracker.idle()
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(cleanupWait):
		f.tb.Errorf("activetest: handlers still running %v after the end of the test", cleanupWait)
	}
	// Connections the balancer opened while the instances closed.
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.slots {
		if s != nil && s.cur != nil {
			s.cur.tr.CloseIdleConnections()
		}
	}
}

// tracker counts the handlers running on a server, and refuses new ones
// once stopped.
type tracker struct {
	mu      sync.Mutex
	n       int
	stopped bool
	done    chan struct{} // closed when stopped and n == 0
}

// wrap runs h for each request the tracker admits, and adds one to count
// (nil: none) as it admits it, under the same lock as stop: once stop
// returns, no request is admitted or counted.
func (t *tracker) wrap(h http.Handler, count *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.mu.Lock()
		if t.stopped {
			// Closed under the request: its connection is gone.
			t.mu.Unlock()
			return
		}
		t.n++
		if count != nil {
			count.Add(1)
		}
		t.mu.Unlock()
		defer t.exit()
		h.ServeHTTP(w, r)
	})
}

func (t *tracker) exit() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n--
	if t.stopped && t.n == 0 {
		t.closeDone()
	}
}

func (t *tracker) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	t.stopped = true
	if t.n == 0 {
		t.closeDone()
	}
}

func (t *tracker) closeDone() {
	if t.done == nil {
		t.done = make(chan struct{})
	}
	close(t.done)
}

// idle returns a channel closed once the tracker is stopped and no handler
// runs.
func (t *tracker) idle() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done == nil {
		t.done = make(chan struct{})
	}
	return t.done
}
