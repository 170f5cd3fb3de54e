package discovery

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/activekit/activekit/retry"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
)

// IdempotencyKeyHeader marks a request as safe to retry whatever its
// method: the server promises to apply one key at most once.
const IdempotencyKeyHeader = "Idempotency-Key"

// ErrTooManyServices is wrapped by the error of a request for a service that
// a Transport would have to start watching beyond TransportConfig.MaxServices.
var ErrTooManyServices = errors.New("discovery: too many services")

// Defaults of TransportConfig.
const (
	// DefaultIdleTimeout is how long a Transport keeps watching a service
	// that no request uses.
	DefaultIdleTimeout = 10 * time.Minute
	// DefaultMaxServices is how many services a Transport watches at
	// most.
	DefaultMaxServices = 256
)

// DefaultRetryPolicy is the policy used when TransportConfig.Retry is the
// zero value: at most 3 attempts, each on a different instance, after a
// short jittered pause (up to 10ms, then 20ms). The pause is short because
// a retry goes to another instance, which has no reason to be busy.
var DefaultRetryPolicy = retry.Policy{
	InitialInterval: 10 * time.Millisecond,
	Multiplier:      2,
	MaxInterval:     100 * time.Millisecond,
	MaxAttempts:     3,
	MaxElapsedTime:  10 * time.Second,
	Jitter:          retry.FullJitter,
}

// TransportConfig configures a Transport. The zero value means the defaults.
type TransportConfig struct {
	// Base sends each attempt to the picked instance;
	// http.DefaultTransport when nil. When it is an *http.Transport, https
	// requests go through a clone of it per service (see Transport), which
	// Close and CloseIdleConnections close; Base itself is never modified.
	Base http.RoundTripper
	// TLSServerName returns the name that the certificate of every
	// instance of service must hold, for an https request. Nil means the
	// service name itself, unless Base's TLSClientConfig sets a
	// ServerName, which then holds for every service. An empty result
	// means the instance's address (the certificate must name its IP).
	// It applies only when Base is an *http.Transport or nil, and has no
	// DialTLSContext (which makes its own handshake).
	TLSServerName func(service string) string
	// Balancer configures the balancer of each service.
	Balancer BalancerConfig
	// Retry is the retry policy of idempotent requests; DefaultRetryPolicy
	// when it is the zero value. Its Retryable field is ignored: the
	// transport decides what is retried. MaxAttempts counts instances
	// tried.
	Retry retry.Policy
	// Budget caps retries at a share of requests. Nil means a budget with
	// retry's defaults for each service, so that the retries to one
	// service stay under about 20% of its traffic.
	Budget *retry.Budget
	// Propagator injects the trace context into every attempt's headers;
	// nil means otel.GetTextMapPropagator() at the time of the request.
	Propagator propagation.TextMapPropagator
	// Clock is the clock of the retry loop and of idle watches; nil means
	// the system clock.
	Clock retry.Clock
	// IdleTimeout is how long the watch of a service outlives its last
	// request: a service that no request has used for IdleTimeout has its
	// watch stopped, within IdleTimeout/2 (at least 1ms) more, and a later
	// request for it starts a new one. Zero means DefaultIdleTimeout; a
	// negative value keeps every watch until Close.
	IdleTimeout time.Duration
	// MaxServices caps the services watched at once: a request for one
	// more fails with an error wrapping ErrTooManyServices, after the
	// services idle for IdleTimeout have made what room they can. Zero
	// means DefaultMaxServices; a negative value means no cap.
	MaxServices int
	// Logger receives ejections and failed watches; nil means no logging.
	Logger *slog.Logger
	// MeterProvider creates the counters of every service's balancer
	// (activekit.discovery.picks and .ejections), of the transport
	// (activekit.discovery.retries) and of its retriers (package retry);
	// nil means otel.GetMeterProvider(), a no-op unless the application
	// set one. It overrides Balancer.MeterProvider.
	MeterProvider metric.MeterProvider
}

// Transport is an http.RoundTripper that sends a request for
// http://orders/path to a healthy instance of the service "orders": the URL's
// host names the service, and the transport resolves it through a Resolver
// watch, balances over its instances with a Balancer, and retries
// idempotent requests on a different instance.
//
// A request is retried only when its body can be sent again (no body, or
// Request.GetBody set, as http.NewRequest does for in-memory bodies); on an
// instance it has not tried (when every instance has been tried, the last
// failure is returned at once, its error wrapping ErrNoInstances); while the
// retry budget allows. An idempotent request (GET, HEAD, OPTIONS and TRACE,
// or any method with an Idempotency-Key header) is retried after a
// connection failure or a 502, 503 or 504 answer. Any other request is
// retried only when the connection to the instance could not be made (the
// dial failed: the request never left), and never once it was sent, whatever
// became of it. Everything else is sent once. The body of an answer that is
// not returned is drained and closed, so that its connection is reused. The
// request's Host header is left as the service name. The trace context of the
// request's context is injected into each attempt's headers. The caller's
// request is never modified: each attempt is a clone.
//
// An https request (https://orders/path) is sent to the instance's address,
// and the instance's certificate is verified against the service name
// ("orders"), as a fleet's certificates name the service, not the address
// of each instance; TransportConfig.TLSServerName names something else.
// For that, https requests go through a clone of Base (an *http.Transport)
// per service, with its TLSClientConfig.ServerName set, so that a
// connection verified for one service never carries a request for another,
// even to the same address; connections are pooled per instance address,
// as always. HTTP/2 stays enabled on the clone when Base would use it
// (net/http's own, configured by Base.HTTP2, even where Base's was set up by
// golang.org/x/net/http2, whose pool would mix the services). A Base's own
// DialTLSContext (or DialTLS) dials the clone's connections, which the
// Transport closes when it stops watching the service as it does the
// others, while net/http still gets its *tls.Conn as is (the response's
// TLS state, HTTP/2). When Base is another RoundTripper, it gets the request with the instance's
// address as URL host, and verifies whatever it is configured to.
//
// Each response holds its instance's in-flight slot (see Balancer) until its
// body is read to the end or closed, so close every body, as net/http asks;
// a response without a body (http.NoBody: HEAD, 204, Content-Length: 0)
// or an upgraded connection (101 Switching Protocols, whose body is the
// io.ReadWriteCloser) releases it at once.
//
// The first request for a service starts a watch of that service in a
// goroutine owned by the Transport, and waits (within its context) for the
// first list of instances. Since the URL host is the service name, and may
// come from user input, watches are bounded: one that no request has used
// for TransportConfig.IdleTimeout is stopped (the next request for its
// service starts it again), and at most TransportConfig.MaxServices run at
// once. While any watch runs, one more goroutine looks for idle ones. Close
// stops them all. A Transport is safe for concurrent use.
type Transport struct {
	resolver Resolver
	cfg      TransportConfig
	base     http.RoundTripper
	clock    retry.Clock
	counters *instruments  // retries; the service attribute is in service.metricOpts
	done     chan struct{} // closed by Close: stops sweep

	mu       sync.Mutex
	closed   bool
	services map[string]*service
	sweeping bool // the sweep goroutine runs
	wg       sync.WaitGroup
}

// service is the transport's state for one service name.
type service struct {
	name    string
	bal     *Balancer
	retrier *retry.Retrier
	budget  *retry.Budget
	cancel  context.CancelFunc
	ready   chan struct{} // closed at the first update or when the watch ends

	metricOpts []metric.AddOption // the service attribute

	active atomic.Int64 // RoundTrip calls in progress
	used   atomic.Int64 // when a RoundTrip last started or ended, Unix ns of Transport.clock

	mu      sync.Mutex
	err     error                     // the watch's last error, or why it ended
	started bool                      // ready is closed
	stopped bool                      // no longer in Transport.services: its watch is over or ending
	tls     *http.Transport           // the clone of the base for https, made at the first https request
	busy    int                       // attempts over tls begun and not ended (see begin)
	conns   map[*trackedConn]struct{} // the open connections tls dialed
	// The *tls.Conn that a DialTLSContext or DialTLS of the base returned
	// (see trackDialTLS), held weakly: net/http must get them unwrapped, so
	// their Close cannot tell s; an entry goes when its conn is collected.
	tlsConns map[weak.Pointer[tls.Conn]]struct{}
}

var _ http.RoundTripper = (*Transport)(nil)

// NewTransport returns a Transport that resolves services with r.
func NewTransport(r Resolver, cfg TransportConfig) (*Transport, error) {
	if r == nil {
		return nil, fmt.Errorf("%w: nil resolver", ErrInvalidConfig)
	}
	if _, err := cfg.Balancer.normalize(); err != nil {
		return nil, err
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxServices == 0 {
		cfg.MaxServices = DefaultMaxServices
	}
	if cfg.Retry.InitialInterval == 0 && cfg.Retry.MaxAttempts == 0 && cfg.Retry.MaxInterval == 0 &&
		cfg.Retry.Multiplier == 0 && cfg.Retry.MaxElapsedTime == 0 && cfg.Retry.Jitter == 0 {
		cfg.Retry = DefaultRetryPolicy
	}
	cfg.Retry.Retryable = retry.IsRetryable
	if err := cfg.Retry.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Balancer.Logger == nil {
		cfg.Balancer.Logger = cfg.Logger
	}
	if cfg.MeterProvider == nil {
		cfg.MeterProvider = otel.GetMeterProvider()
	}
	cfg.Balancer.MeterProvider = cfg.MeterProvider
	counters, err := newInstruments(cfg.MeterProvider, "")
	if err != nil {
		return nil, err
	}
	t := &Transport{resolver: r, cfg: cfg, base: cfg.Base, clock: cfg.Clock, services: make(map[string]*service), counters: counters, done: make(chan struct{})}
	if t.base == nil {
		t.base = http.DefaultTransport
	}
	if t.clock == nil {
		t.clock = systemClock{}
	}
	return t, nil
}

// Balancer returns the balancer of service, or nil when no request has
// asked for that service yet, or since its idle watch was stopped. It is
// meant for inspection (tests, status pages).
func (t *Transport) Balancer(service string) *Balancer {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.services[service]; s != nil {
		return s.bal
	}
	return nil
}

// Close stops every watch and waits for their goroutines. Requests in flight
// finish, on the instances known at Close; requests still waiting for a
// service's first list, and later requests, fail with ErrClosed. Close closes
// the idle connections of the clones of Base that it made for https (and
// those of requests in flight once they end), not those of Base itself.
func (t *Transport) Close() error {
	t.mu.Lock()
	if !t.closed {
		close(t.done)
	}
	t.closed = true
	services := slices.Collect(maps.Values(t.services))
	for _, s := range services {
		s.cancel()
	}
	t.mu.Unlock()
	t.wg.Wait()
	for _, s := range services {
		s.stop()
	}
	return nil
}

// CloseIdleConnections closes the idle connections of Base (when it has a
// CloseIdleConnections method, as *http.Transport has) and of the clones of
// Base made for https. http.Client.CloseIdleConnections calls it.
func (t *Transport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
	t.mu.Lock()
	services := slices.Collect(maps.Values(t.services))
	t.mu.Unlock()
	for _, s := range services {
		s.closeIdle()
	}
}

// closeIdle closes the idle connections of s's https transport, and every
// HTTP/1 connection that becomes idle after (until the transport is used
// again).
func (s *service) closeIdle() {
	s.mu.Lock()
	tr := s.tls
	s.mu.Unlock()
	if tr != nil {
		tr.CloseIdleConnections()
	}
}

// stop marks s stopped, once it has left Transport.services, and closes
// every connection its https transport dialed as soon as no attempt uses
// them: now, or as the last attempt of the requests still using s ends
// (see ended). CloseIdleConnections is not enough: an HTTP/1 transport
// closes the connections that become idle only until its next request (a
// retry, another request in flight), an HTTP/2 connection busy at the time
// is never closed, and a dial still running (started for a request that
// then took another connection) adds its connection later; each would stay
// open, its goroutines with it, until the base's IdleConnTimeout.
func (s *service) stop() {
	s.closeIdle()
	s.mu.Lock()
	s.stopped = true
	conns := s.unusedLocked()
	s.mu.Unlock()
	closeConns(conns)
}

// begin counts an attempt over s's https transport, until its ended.
func (s *service) begin() {
	s.mu.Lock()
	s.busy++
	s.mu.Unlock()
}

// ended ends what begin began: the attempt's RoundTrip failed, or its
// response has no body or its body was read to the end, failed or closed.
func (s *service) ended() {
	s.mu.Lock()
	s.busy--
	conns := s.unusedLocked()
	s.mu.Unlock()
	closeConns(conns)
}

// unusedLocked returns, and forgets, the connections of s's https
// transport when s is stopped and no attempt uses them. s.mu is held.
func (s *service) unusedLocked() []net.Conn {
	if !s.stopped || s.busy > 0 || len(s.conns)+len(s.tlsConns) == 0 {
		return nil
	}
	var conns []net.Conn
	for c := range s.conns {
		conns = append(conns, c.Conn)
	}
	for p := range s.tlsConns {
		// A conn already closed is closed again, harmlessly.
		if c := p.Value(); c != nil {
			conns = append(conns, c.NetConn())
		}
	}
	clear(s.conns)
	clear(s.tlsConns)
	return conns
}

// closeConns closes the connections under the TLS of s's https transport:
// at once, where closing the TLS would first send an alert, which a peer
// that no longer reads could hold for seconds.
func closeConns(conns []net.Conn) {
	for _, c := range conns {
		_ = c.Close()
	}
}

// trackDial returns a DialContext that dials with dial and keeps the
// connections in s.conns until they close.
func (s *service) trackDial(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.stopped && s.busy == 0 {
			// No attempt waits for it: a dial that outlived its request.
			_ = c.Close()
			return nil, fmt.Errorf("discovery: %s: %w", s.name, ErrClosed)
		}
		tc := &trackedConn{Conn: c, s: s}
		if s.conns == nil {
			s.conns = make(map[*trackedConn]struct{})
		}
		s.conns[tc] = struct{}{}
		return tc, nil
	}
}

// trackedConn is a connection of a service's https transport.
type trackedConn struct {
	net.Conn
	s *service
}

func (c *trackedConn) Close() error {
	c.s.mu.Lock()
	delete(c.s.conns, c)
	c.s.mu.Unlock()
	return c.Conn.Close()
}

// trackDialTLS is trackDial for a DialTLSContext of the base, which makes
// its own handshake. net/http reads the TLS state of the connection, and
// negotiates HTTP/2, only when it gets a *tls.Conn, so one is not wrapped:
// s keeps a weak pointer to it in s.tlsConns, which a stopped s closes
// like the others, and which goes once the conn is collected (net/http
// keeps a conn it uses, open or pooled). Another kind of conn is wrapped,
// as trackDial does, net/http seeing no TLS in it anyway.
func (s *service) trackDialTLS(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil || c == nil {
			return c, err // net/http reports (nil, nil)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.stopped && s.busy == 0 {
			_ = c.Close()
			return nil, fmt.Errorf("discovery: %s: %w", s.name, ErrClosed)
		}
		tc, ok := c.(*tls.Conn)
		if !ok {
			w := &trackedConn{Conn: c, s: s}
			if s.conns == nil {
				s.conns = make(map[*trackedConn]struct{})
			}
			s.conns[w] = struct{}{}
			return w, nil
		}
		p := weak.Make(tc)
		if s.tlsConns == nil {
			s.tlsConns = make(map[weak.Pointer[tls.Conn]]struct{})
		}
		s.tlsConns[p] = struct{}{}
		runtime.AddCleanup(tc, s.forgetTLS, p)
		return tc, nil
	}
}

// forgetTLS drops the entry of a *tls.Conn that was collected.
func (s *service) forgetTLS(p weak.Pointer[tls.Conn]) {
	s.mu.Lock()
	delete(s.tlsConns, p)
	s.mu.Unlock()
}

// roundTripper returns what sends an attempt of s with scheme, and whether
// it is s's own: for https, the clone of the base that verifies s's
// certificates, made at its first use; otherwise the base.
func (t *Transport) roundTripper(s *service, scheme string) (http.RoundTripper, bool) {
	base, ok := t.base.(*http.Transport)
	if !ok || scheme != "https" {
		return t.base, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tls == nil {
		c := tlsClone(base, s.name, t.cfg.TLSServerName)
		dial := c.DialContext
		switch {
		case dial != nil:
		case c.Dial != nil: //lint:ignore SA1019 a Base may still set Dial, which net/http uses then
			d := c.Dial //lint:ignore SA1019 as above
			dial = func(_ context.Context, network, addr string) (net.Conn, error) { return d(network, addr) }
		default:
			dial = new(net.Dialer).DialContext // what net/http uses then
		}
		c.DialContext = s.trackDial(dial)
		// A DialTLSContext (or DialTLS) of the base dials https instead
		// of DialContext.
		switch {
		case c.DialTLSContext != nil:
			c.DialTLSContext = s.trackDialTLS(c.DialTLSContext)
		case c.DialTLS != nil: //lint:ignore SA1019 a Base may still set DialTLS, which net/http uses then
			d := c.DialTLS //lint:ignore SA1019 as above
			c.DialTLSContext = s.trackDialTLS(func(_ context.Context, network, addr string) (net.Conn, error) { return d(network, addr) })
		}
		s.tls = c
	}
	return s.tls, true
}

// tlsClone returns a clone of base that verifies certificates against the
// name serverName gives service (nil: service itself, unless base sets a
// ServerName).
func tlsClone(base *http.Transport, service string, serverName func(string) string) *http.Transport {
	c := base.Clone()
	if c.TLSClientConfig == nil {
		c.TLSClientConfig = new(tls.Config)
	}
	// Clone leaves the clone's TLSNextProto nil and copies the
	// TLSClientConfig that base's HTTP/2 set-up filled in, offering h2 by
	// ALPN. net/http takes that for a custom TLS config, on which it does
	// not set up HTTP/2 by itself: the clone would offer h2 and then speak
	// HTTP/1.1 to a server that chose it. Keep what base does.
	if c.Protocols == nil && c.TLSNextProto == nil && slices.Contains(c.TLSClientConfig.NextProtos, "h2") {
		c.ForceAttemptHTTP2 = true
	}
	// An HTTP/2 that base did not set up itself (golang.org/x/net/http2's
	// ConfigureTransports) is in TLSNextProto, which Clone copies: its
	// connections, the clone's included, go to one pool of base's, keyed
	// by address, from which a request for this service would take a
	// connection opened (and verified) for another. The clone speaks
	// net/http's own HTTP/2 instead, configured by base.HTTP2.
	if c.TLSNextProto["h2"] != nil {
		c.TLSNextProto = nil
		c.ForceAttemptHTTP2 = true
	}
	switch {
	case serverName != nil:
		c.TLSClientConfig.ServerName = serverName(service)
	case c.TLSClientConfig.ServerName == "":
		c.TLSClientConfig.ServerName = service
	}
	return c
}

// service returns the state of name, starting its watch if needed, and
// counts a RoundTrip in progress on it until its release.
func (t *Transport) service(name string) (*service, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	if s := t.services[name]; s != nil {
		s.acquire(t.clock)
		return s, nil
	}
	if err := ValidateServiceName(name); err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	if t.cfg.MaxServices > 0 && len(t.services) >= t.cfg.MaxServices {
		t.stopIdleLocked()
		if len(t.services) >= t.cfg.MaxServices {
			return nil, fmt.Errorf("%w: watching %d (TransportConfig.MaxServices), none idle, so not %s", ErrTooManyServices, len(t.services), name)
		}
	}
	bcfg := t.cfg.Balancer
	bcfg.Service = name
	bal, err := NewBalancer(bcfg)
	if err != nil {
		return nil, err // unreachable: checked in NewTransport
	}
	budget := t.cfg.Budget
	if budget == nil {
		if budget, err = retry.NewBudget(retry.BudgetConfig{}); err != nil {
			return nil, err
		}
	}
	opts := []retry.Option{retry.WithBudget(budget), retry.WithName("discovery:" + name), retry.WithMeterProvider(t.cfg.MeterProvider)}
	if t.cfg.Clock != nil {
		opts = append(opts, retry.WithClock(t.cfg.Clock))
	}
	retrier, err := retry.New(t.cfg.Retry, opts...)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &service{name: name, bal: bal, retrier: retrier, budget: budget, cancel: cancel, ready: make(chan struct{}), metricOpts: bal.counters.opts}
	s.acquire(t.clock)
	t.services[name] = s
	t.wg.Add(1)
	go t.watch(ctx, s)
	if t.cfg.IdleTimeout > 0 && !t.sweeping {
		t.sweeping = true
		t.wg.Add(1)
		go t.sweep()
	}
	return s, nil
}

// acquire counts a RoundTrip in progress on s.
func (s *service) acquire(c retry.Clock) {
	s.used.Store(c.Now().UnixNano())
	s.active.Add(1)
}

// release ends what acquire began.
func (s *service) release(c retry.Clock) {
	s.used.Store(c.Now().UnixNano())
	s.active.Add(-1)
}

// sweep stops idle watches every IdleTimeout/2 (at most every
// millisecond), until Close or until no watch is left.
func (t *Transport) sweep() {
	defer t.wg.Done()
	every := max(t.cfg.IdleTimeout/2, time.Millisecond)
	for {
		tm := t.clock.NewTimer(every)
		select {
		case <-t.done:
			tm.Stop()
			return
		case <-tm.C():
		}
		t.mu.Lock()
		t.stopIdleLocked()
		if len(t.services) == 0 {
			t.sweeping = false
			t.mu.Unlock()
			return
		}
		t.mu.Unlock()
	}
}

// stopIdleLocked stops the watches of the services that no RoundTrip has
// used for IdleTimeout. t.mu is held.
func (t *Transport) stopIdleLocked() {
	if t.cfg.IdleTimeout <= 0 {
		return
	}
	now := t.clock.Now().UnixNano()
	for name, s := range t.services {
		if s.active.Load() == 0 && now-s.used.Load() >= int64(t.cfg.IdleTimeout) {
			delete(t.services, name)
			s.cancel()
			s.stop()
		}
	}
}

// watch runs the resolver watch of s until Close or until s is idle. If the
// watch ends on its own, s is forgotten so that the next request starts a
// new one.
func (t *Transport) watch(ctx context.Context, s *service) {
	defer t.wg.Done()
	err := t.resolver.Watch(ctx, s.name, func(u Update) {
		if u.Err == nil || len(u.Instances) > 0 {
			s.bal.Update(u.Instances)
		}
		s.mu.Lock()
		s.err = u.Err
		if !s.started {
			s.started = true
			close(s.ready)
		}
		s.mu.Unlock()
	})
	if ctx.Err() != nil {
		// Closed or idle: release the requests still waiting for a first
		// list (only Close can leave some).
		s.mu.Lock()
		if !s.started {
			s.started = true
			s.err = ErrClosed
			close(s.ready)
		}
		s.mu.Unlock()
		return
	}
	if err == nil {
		err = errors.New("watch ended")
	}
	t.cfg.Logger.Warn("discovery: watch ended", "service", s.name, "error", err)
	t.mu.Lock()
	if t.services[s.name] == s {
		delete(t.services, s.name)
	}
	t.mu.Unlock()
	s.mu.Lock()
	s.err = fmt.Errorf("discovery: watch of %s: %w", s.name, err)
	if !s.started {
		s.started = true
		close(s.ready)
	}
	s.mu.Unlock()
	s.cancel()
	s.stop()
}

// RoundTrip sends req to an instance of the service named by its URL host.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	name := req.URL.Hostname()
	s, err := t.service(name)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	defer s.release(t.clock)
	ctx := req.Context()
	select {
	case <-s.ready:
	case <-ctx.Done():
		closeBody(req)
		return nil, fmt.Errorf("discovery: waiting for the instances of %s: %w", name, context.Cause(ctx))
	}
	if !replayable(req) {
		s.budget.Deposit() // every call earns retries for the others, as in retry.Retrier.Do
		resp, _, err := t.attempt(s, req, req.Body, nil)
		if err != nil {
			return nil, err
		}
		return resp, nil
	}
	idem := idempotent(req)

	var (
		tried   []string
		last    *http.Response // the last retryable answer, returned if no retry succeeds
		lastErr error          // the last attempt's failure
		resp    *http.Response
		started bool // the first attempt was made: req.Body is closed
	)
	err = s.retrier.Do(ctx, func(ctx context.Context) error {
		started = true
		body := req.Body
		if len(tried) > 0 {
			t.counters.retries.Add(ctx, 1, s.metricOpts...)
			if req.Body != nil && req.Body != http.NoBody {
				b, err := req.GetBody()
				if err != nil {
					return retry.Permanent(fmt.Errorf("discovery: replaying the request body: %w", err))
				}
				body = b
			}
		}
		r, key, err := t.attempt(s, req, body, tried)
		if key != "" {
			tried = append(tried, key)
		}
		switch {
		case errors.Is(err, ErrNoInstances) && lastErr != nil:
			// The instances not tried left the list since the check below.
			return retry.Permanent(fmt.Errorf("%w (%w: every instance tried)", lastErr, ErrNoInstances))
		case errors.Is(err, ErrNoInstances):
			return retry.Permanent(err)
		case err != nil && !idem && !notSent(err):
			// Sent, or maybe sent: a second instance could apply it again.
			return retry.Permanent(err)
		case err != nil:
			lastErr = err
		case idem && retryStatus(r.StatusCode):
			if last != nil {
				drain(last)
			}
			last = r
			lastErr = fmt.Errorf("discovery: %s instance %s answered %s", s.name, key, r.Status)
		default:
			resp = r
			return nil
		}
		if ctx.Err() == nil && retry.IsRetryable(lastErr) && !s.bal.hasCandidate(tried) {
			// Nothing left to retry on: stop now, without waiting or
			// spending the budget on an attempt that cannot be made.
			return retry.Permanent(fmt.Errorf("%w (%w: every instance tried)", lastErr, ErrNoInstances))
		}
		return lastErr
	})
	if !started {
		closeBody(req) // Do returned before the first attempt: ctx had ended
	}
	if err == nil {
		if last != nil {
			drain(last)
		}
		return resp, nil
	}
	if last != nil {
		return last, nil
	}
	return nil, err
}

// attempt sends one attempt of req, with body, to an instance not in
// exclude. It returns the picked instance's key (empty when none could be
// picked: the error then wraps ErrNoInstances).
func (t *Transport) attempt(s *service, req *http.Request, body io.ReadCloser, exclude []string) (*http.Response, string, error) {
	lease, err := s.bal.Pick(exclude...)
	if err != nil {
		if body != nil {
			_ = body.Close()
		}
		s.mu.Lock()
		werr := s.err
		s.mu.Unlock()
		if len(exclude) == 0 && werr != nil {
			err = fmt.Errorf("%w (%w)", err, werr)
		}
		return nil, "", fmt.Errorf("discovery: %s: %w", s.name, err)
	}
	inst := lease.Instance()
	key := instanceKey(&inst)
	out := req.Clone(req.Context())
	out.Body = body
	out.URL.Host = inst.HostPort()
	if out.Host == "" {
		out.Host = req.URL.Host
	}
	if out.Header == nil {
		out.Header = make(http.Header)
	}
	t.propagator().Inject(req.Context(), propagation.HeaderCarrier(out.Header))
	rt, own := t.roundTripper(s, out.URL.Scheme)
	ended := func() {}
	if own {
		s.begin()
		ended = s.ended
	}
	resp, err := rt.RoundTrip(out)
	if err != nil {
		ended()
		if req.Context().Err() != nil {
			lease.Done(Ignored)
			return nil, key, err
		}
		lease.Done(Unreachable)
		return nil, key, fmt.Errorf("discovery: %s instance %s: %w", s.name, key, err)
	}
	o := Success
	if resp.StatusCode >= 500 {
		o = Failure
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// An upgraded connection: its body is an io.ReadWriteCloser that
		// must be handed over as is, and may stay open for hours, so the
		// request is over for the balancer. The attempt is not ended
		// (ended is not called): the connection is the caller's now,
		// and must not be closed with s's.
		lease.Done(o)
		return resp, key, nil
	}
	if resp.Body == nil || resp.Body == http.NoBody {
		lease.Done(o)
		ended()
		return resp, key, nil
	}
	resp.Body = &leasedBody{rc: resp.Body, lease: lease, outcome: o, ctxErr: req.Context().Err, ended: ended}
	return resp, key, nil
}

func (t *Transport) propagator() propagation.TextMapPropagator {
	if t.cfg.Propagator != nil {
		return t.cfg.Propagator
	}
	return otel.GetTextMapPropagator()
}

// idempotent reports whether req may be applied more than once.
func idempotent(req *http.Request) bool {
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return req.Header.Get(IdempotencyKeyHeader) != ""
}

// replayable reports whether req's body can be sent more than once.
func replayable(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

// notSent reports an attempt's error that proves the request never left: the
// connection to the instance could not be made.
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// retryStatus reports an answer that says this instance, not the request,
// is the problem.
func retryStatus(code int) bool {
	return code == http.StatusBadGateway || code == http.StatusServiceUnavailable || code == http.StatusGatewayTimeout
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// drain discards a response that will not be returned, so that its
// connection can be reused.
func drain(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	_ = resp.Body.Close()
}

// leasedBody keeps the lease of a response until its body is read to the end
// or closed, so that a long download counts as in flight.
type leasedBody struct {
	rc      io.ReadCloser
	lease   *Lease
	outcome Outcome
	ctxErr  func() error // the request context's Err
	ended   func()       // called with the lease's Done
	once    sync.Once
}

func (b *leasedBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	switch {
	case err == io.EOF:
		b.done(b.outcome)
	case err != nil:
		if b.ctxErr() != nil {
			b.done(Ignored)
		} else {
			b.done(Unreachable)
		}
	}
	return n, err
}

func (b *leasedBody) Close() error {
	err := b.rc.Close()
	b.done(b.outcome)
	return err
}

func (b *leasedBody) done(o Outcome) {
	b.once.Do(func() {
		b.lease.Done(o)
		b.ended()
	})
}

// systemClock is the retry.Clock backed by package time.
type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) NewTimer(d time.Duration) retry.Timer { return systemTimer{time.NewTimer(d)} }

type systemTimer struct{ t *time.Timer }

func (t systemTimer) C() <-chan time.Time { return t.t.C }
func (t systemTimer) Stop() bool          { return t.t.Stop() }
