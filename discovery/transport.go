package discovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/activekit/activekit/retry"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
)

// IdempotencyKeyHeader marks a request as safe to retry whatever its
// method: the server promises to apply one key at most once.
const IdempotencyKeyHeader = "Idempotency-Key"

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
	// http.DefaultTransport when nil.
	Base http.RoundTripper
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
	// Clock is the retry loop's clock; nil means the system clock.
	Clock retry.Clock
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
// became of it. Everything else is sent once. The body of an answer that is not returned is drained and closed,
// so that its connection is reused. The request's Host header is left as the
// service name. The trace context of the request's context is injected into
// each attempt's headers. The caller's request is never modified: each
// attempt is a clone.
//
// Each response holds its instance's in-flight slot (see Balancer) until its
// body is read to the end or closed, so close every body, as net/http asks;
// a response without a body (http.NoBody: HEAD, 204, Content-Length: 0)
// or an upgraded connection (101 Switching Protocols, whose body is the
// io.ReadWriteCloser) releases it at once.
//
// The first request for a service starts a watch of that service in a
// goroutine owned by the Transport, and waits (within its context) for the
// first list of instances; Close stops every watch. A Transport is safe for
// concurrent use.
type Transport struct {
	resolver Resolver
	cfg      TransportConfig
	base     http.RoundTripper
	counters *instruments // retries; the service attribute is in service.metricOpts

	mu       sync.Mutex
	closed   bool
	services map[string]*service
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

	mu      sync.Mutex
	err     error // the watch's last error, or why it ended
	started bool  // ready is closed
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
	t := &Transport{resolver: r, cfg: cfg, base: cfg.Base, services: make(map[string]*service), counters: counters}
	if t.base == nil {
		t.base = http.DefaultTransport
	}
	return t, nil
}

// Balancer returns the balancer of service, or nil when no request has
// asked for that service yet. It is meant for inspection (tests, status
// pages).
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
// service's first list, and later requests, fail with ErrClosed. Close does not close the
// base transport's idle connections.
func (t *Transport) Close() error {
	t.mu.Lock()
	t.closed = true
	for _, s := range t.services {
		s.cancel()
	}
	t.mu.Unlock()
	t.wg.Wait()
	return nil
}

// service returns the state of name, starting its watch if needed.
func (t *Transport) service(name string) (*service, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	if s := t.services[name]; s != nil {
		return s, nil
	}
	if err := ValidateServiceName(name); err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
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
	t.services[name] = s
	t.wg.Add(1)
	go t.watch(ctx, s)
	return s, nil
}

// watch runs the resolver watch of s until Close. If the watch ends on its
// own, s is forgotten so that the next request starts a new one.
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
		// Closed: release the requests still waiting for a first list.
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
}

// RoundTrip sends req to an instance of the service named by its URL host.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	name := req.URL.Hostname()
	s, err := t.service(name)
	if err != nil {
		closeBody(req)
		return nil, err
	}
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
	resp, err := t.base.RoundTrip(out)
	if err != nil {
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
	if resp.Body == nil || resp.Body == http.NoBody || resp.StatusCode == http.StatusSwitchingProtocols {
		// Nothing to read, or an upgraded connection (its body is an
		// io.ReadWriteCloser that must be handed over as is, and may stay
		// open for hours): the request is over.
		lease.Done(o)
		return resp, key, nil
	}
	resp.Body = &leasedBody{rc: resp.Body, lease: lease, outcome: o, ctxErr: req.Context().Err}
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

func (b *leasedBody) done(o Outcome) { b.once.Do(func() { b.lease.Done(o) }) }
