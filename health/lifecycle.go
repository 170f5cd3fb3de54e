package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// Defaults of a Lifecycle whose durations are zero. They fit the default
// Kubernetes termination grace period of 30s with 10s to spare.
const (
	DefaultDrainDelay      = 5 * time.Second
	DefaultShutdownTimeout = 10 * time.Second
	DefaultCloseTimeout    = 5 * time.Second
	DefaultGracePeriod     = 30 * time.Second
)

// ErrInvalidLifecycle is returned, wrapped with the reason, by
// Lifecycle.Run when the lifecycle cannot run as configured, including when
// its phases do not fit the termination grace period.
var ErrInvalidLifecycle = errors.New("health: invalid lifecycle")

// Server is an HTTP server that a Lifecycle runs.
type Server struct {
	// HTTP is the server. Required. Its Handler serves the application
	// and, usually, the health views (or a second Server does).
	HTTP *http.Server
	// Listener is where HTTP serves. Nil means listen on TCP at HTTP.Addr
	// (":http", or ":https" with a TLSConfig, when Addr is empty). When
	// HTTP.TLSConfig is set, the server serves TLS with its certificates.
	Listener net.Listener
}

// Closer releases one resource when the service stops: deregister from
// discovery, flush telemetry, close a client.
type Closer struct {
	// Name says what is being closed, in errors and logs.
	Name string
	// Close releases the resource. ctx carries the close deadline.
	Close func(ctx context.Context) error
}

// Lifecycle runs a service from start to stop so that a rolling update
// drops no request. The zero value of each duration means its default.
//
// Run goes through four states:
//
//   - Starting: listen on every server and serve; run OnStarted; then
//     Registry.MarkStarted, so startup passes and readiness follows its
//     checks (Ready).
//   - Ready: wait for SIGTERM or SIGINT (see Signal), for ctx to end, or
//     for a server to fail.
//   - Draining: readiness fails at once (Registry.MarkDraining); OnDrain
//     starts (make the Consul check critical); meanwhile Run waits DrainDelay,
//     counted from the start of draining, for load balancers and clients to
//     notice, while the servers still serve every request that arrives.
//     Then http.Server.Shutdown closes the listeners and waits, up to
//     ShutdownTimeout, for requests in flight; past it the connections are
//     closed.
//   - Stopped: the Closers run in reverse order (the last registered, the
//     first closed), sharing CloseTimeout.
//
// Drain, shutdown and close run on a fixed schedule from the start of
// draining, so that together they never outlast DrainDelay +
// ShutdownTimeout + CloseTimeout, which Run checks against GracePeriod
// before it starts. An instance that never became ready skips the drain
// delay: no load balancer sends it traffic.
type Lifecycle struct {
	// Registry holds the health state that Run moves through the
	// lifecycle. Required, and must be in StateStarting.
	Registry *Registry

	// Servers are the HTTP servers to run. May be empty, for a worker
	// that serves nothing but still drains and closes in order.
	Servers []Server

	// DrainDelay is how long readiness fails before the servers shut down:
	// at least the load balancer's probe interval times its failure
	// threshold, plus the time clients take to drop the instance.
	// Negative means no delay. Default DefaultDrainDelay.
	DrainDelay time.Duration

	// ShutdownTimeout bounds http.Server.Shutdown, the wait for requests
	// in flight. Default DefaultShutdownTimeout.
	ShutdownTimeout time.Duration

	// CloseTimeout bounds all Closers together. Default
	// DefaultCloseTimeout.
	CloseTimeout time.Duration

	// GracePeriod is the time the orchestrator grants between SIGTERM and
	// SIGKILL (terminationGracePeriodSeconds in Kubernetes). Run refuses
	// to start when DrainDelay + ShutdownTimeout + CloseTimeout exceed it.
	// Default DefaultGracePeriod, the Kubernetes default. A preStop hook
	// in the pod spec runs inside the same grace period: subtract it.
	GracePeriod time.Duration

	// OnStarted hooks run in order once every server listens, before the
	// instance is marked started: register in service discovery, warm a
	// cache. Their ctx ends when shutdown begins. An error stops the
	// service, and Run returns it.
	OnStarted []func(ctx context.Context) error

	// OnDrain hooks run in order as soon as readiness fails, such as
	// setting the Consul health check to critical. They run beside the
	// drain delay: Shutdown begins when it ends even if a hook has not
	// returned. Their ctx ends when the shutdown timeout does, and the
	// closers run only after they returned. Errors are returned by Run but
	// do not stop the drain.
	OnDrain []func(ctx context.Context) error

	// Closers run in reverse order after the servers stopped. Errors are
	// joined into the error of Run.
	Closers []Closer

	// Signal derives the context that ends when the process is told to
	// stop. Nil means signal.NotifyContext(ctx, syscall.SIGTERM,
	// os.Interrupt). Tests inject a function that returns a context they
	// cancel. Run calls the returned CancelFunc as soon as it begins to
	// stop, so that with the default a second SIGTERM or SIGINT is not
	// caught: it kills the process at once (Go's default), skipping what
	// remains of the drain, the shutdown and the closers.
	Signal func(ctx context.Context) (context.Context, context.CancelFunc)

	// Logger logs the lifecycle steps. Nil means the registry's logger.
	Logger *slog.Logger
}

// validate checks lc and fills its defaults.
func (lc *Lifecycle) validate() error {
	if lc.Registry == nil {
		return fmt.Errorf("%w: nil registry", ErrInvalidLifecycle)
	}
	if s := lc.Registry.State(); s != StateStarting {
		return fmt.Errorf("%w: registry is %v, not starting (a registry runs one lifecycle)", ErrInvalidLifecycle, s)
	}
	for i, s := range lc.Servers {
		if s.HTTP == nil {
			return fmt.Errorf("%w: server %d: nil http.Server", ErrInvalidLifecycle, i)
		}
	}
	for i, c := range lc.Closers {
		if c.Close == nil {
			return fmt.Errorf("%w: closer %d (%q): nil Close", ErrInvalidLifecycle, i, c.Name)
		}
	}
	for i, h := range lc.OnStarted {
		if h == nil {
			return fmt.Errorf("%w: OnStarted hook %d is nil", ErrInvalidLifecycle, i)
		}
	}
	for i, h := range lc.OnDrain {
		if h == nil {
			return fmt.Errorf("%w: OnDrain hook %d is nil", ErrInvalidLifecycle, i)
		}
	}
	if err := CheckShutdownBudget(lc.DrainDelay, lc.ShutdownTimeout, lc.CloseTimeout, lc.GracePeriod); err != nil {
		return err
	}
	lc.DrainDelay, lc.ShutdownTimeout, lc.CloseTimeout, lc.GracePeriod = withDefaults(lc.DrainDelay, lc.ShutdownTimeout, lc.CloseTimeout, lc.GracePeriod)
	if lc.Signal == nil {
		lc.Signal = func(ctx context.Context) (context.Context, context.CancelFunc) {
			return signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
		}
	}
	if lc.Logger == nil {
		lc.Logger = lc.Registry.log
	}
	return nil
}

// CheckShutdownBudget reports whether a Lifecycle with these durations
// would start, as Run checks them: a zero duration means its default, a
// negative drain delay means none, any other negative duration is an error,
// and drain delay + shutdown timeout + close timeout must fit in the grace
// period, else the orchestrator kills the process mid-shutdown. The error
// wraps ErrInvalidLifecycle.
//
// A service calls it where it validates its configuration, so that a bad
// change of these settings is refused where it is made (in Consul, say,
// where the running instances keep their last good configuration and
// report the refusal) rather than found at the next restart, when every
// instance of a rolling restart refuses to start.
func CheckShutdownBudget(drainDelay, shutdownTimeout, closeTimeout, gracePeriod time.Duration) error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"shutdown timeout", shutdownTimeout},
		{"close timeout", closeTimeout},
		{"grace period", gracePeriod},
	} {
		if d.v < 0 {
			return fmt.Errorf("%w: negative %s %v", ErrInvalidLifecycle, d.name, d.v)
		}
	}
	drainDelay, shutdownTimeout, closeTimeout, gracePeriod = withDefaults(drainDelay, shutdownTimeout, closeTimeout, gracePeriod)
	if total := drainDelay + shutdownTimeout + closeTimeout; total > gracePeriod {
		return fmt.Errorf("%w: drain delay %v + shutdown timeout %v + close timeout %v = %v exceeds the termination grace period %v; the process would be killed mid-shutdown",
			ErrInvalidLifecycle, drainDelay, shutdownTimeout, closeTimeout, total, gracePeriod)
	}
	return nil
}

// withDefaults returns the durations with zeros replaced by their defaults
// and a negative drain delay by zero (no delay); other negative durations
// are returned as they are.
func withDefaults(drainDelay, shutdownTimeout, closeTimeout, gracePeriod time.Duration) (time.Duration, time.Duration, time.Duration, time.Duration) {
	def := func(v, d time.Duration) time.Duration {
		if v == 0 {
			return d
		}
		return v
	}
	if drainDelay < 0 {
		drainDelay = 0
	} else {
		drainDelay = def(drainDelay, DefaultDrainDelay)
	}
	return drainDelay, def(shutdownTimeout, DefaultShutdownTimeout), def(closeTimeout, DefaultCloseTimeout), def(gracePeriod, DefaultGracePeriod)
}

// Run runs the lifecycle and blocks until the service has stopped. It
// returns nil after a clean stop on a signal or on the end of ctx; else the
// reason it stopped (a listen or serve error, an OnStarted error) joined
// with every drain, shutdown and close error.
//
// Run starts one goroutine per server (Serve) and, for the default Signal,
// the one of signal.NotifyContext; all have ended when it returns. A
// configuration error (wrapping ErrInvalidLifecycle) is returned before
// anything starts, without running the closers; in every other case the
// closers run before Run returns.
func (lc Lifecycle) Run(ctx context.Context) error {
	if err := lc.validate(); err != nil {
		return err
	}
	reg, clock, log := lc.Registry, lc.Registry.clock, lc.Logger

	sigCtx, stopSignals := lc.Signal(ctx)
	defer stopSignals()
	runCtx, stopRun := context.WithCancelCause(sigCtx)
	defer stopRun(nil)

	// Starting: listen everywhere first, so a port in use fails before
	// anything serves.
	listeners, err := listen(lc.Servers)
	if err != nil {
		reg.MarkStopped()
		closeCtx, cancelClose := withDeadline(context.WithoutCancel(ctx), clock, clock.Now().Add(lc.CloseTimeout))
		defer cancelClose()
		return errors.Join(err, lc.close(closeCtx))
	}
	serveErrs := make(chan error, len(lc.Servers))
	var serving sync.WaitGroup
	for i, s := range lc.Servers {
		l := listeners[i]
		serving.Go(func() {
			var err error
			if s.HTTP.TLSConfig != nil {
				err = s.HTTP.ServeTLS(l, "", "")
			} else {
				err = s.HTTP.Serve(l)
			}
			if !errors.Is(err, http.ErrServerClosed) {
				err = fmt.Errorf("health: serving on %s: %w", l.Addr(), err)
				serveErrs <- err
				stopRun(err)
			}
		})
		log.Info("health: serving", "addr", l.Addr().String())
	}

	var cause error
	ready := false
	for _, hook := range lc.OnStarted {
		if runCtx.Err() != nil {
			break
		}
		if err := hook(runCtx); err != nil {
			if runCtx.Err() == nil {
				cause = fmt.Errorf("health: starting: %w", err)
			} else {
				log.Info("health: start hook ended by shutdown", "error", err)
			}
			break
		}
	}
	if cause == nil && runCtx.Err() == nil {
		reg.MarkStarted()
		ready = true
		<-runCtx.Done()
	}
	log.Info("health: stopping", "reason", context.Cause(runCtx))
	// Stop catching signals: a second one is an operator who wants the
	// process down now, and gets Go's default, death at once.
	stopSignals()

	// Draining, on a fixed schedule from now.
	reg.MarkDraining()
	stopCtx := context.WithoutCancel(ctx)
	drainDelay := lc.DrainDelay
	if !ready {
		drainDelay = 0
	}
	start := clock.Now()
	drainEnd := start.Add(drainDelay)
	shutdownEnd := drainEnd.Add(lc.ShutdownTimeout)

	// The hooks run beside the schedule, not before it: a hook that hangs
	// (an agent that does not answer) must not hold Shutdown back past the
	// drain delay and eat the time of the requests in flight.
	var errs, hookErrs []error
	hookCtx, cancelHooks := withDeadline(stopCtx, clock, shutdownEnd)
	hooksDone := make(chan struct{})
	go func() {
		defer close(hooksDone)
		for _, hook := range lc.OnDrain {
			if err := hook(hookCtx); err != nil {
				hookErrs = append(hookErrs, fmt.Errorf("health: drain hook: %w", err))
			}
		}
	}()
	sleepUntil(clock, drainEnd)

	// Shutdown: stop accepting, wait for requests in flight.
	log.Info("health: shutting down servers")
	shutCtx, cancelShut := withDeadline(stopCtx, clock, shutdownEnd)
	shutErrs := make([]error, len(lc.Servers))
	var shutting sync.WaitGroup
	for i, s := range lc.Servers {
		shutting.Go(func() {
			if err := s.HTTP.Shutdown(shutCtx); err != nil {
				shutErrs[i] = fmt.Errorf("health: shutting down %s: %w", listeners[i].Addr(), err)
				_ = s.HTTP.Close() // cut the requests still in flight
			}
		})
	}
	shutting.Wait()
	cancelShut()
	serving.Wait()
	<-hooksDone // within their deadline, the end of the shutdown timeout
	cancelHooks()
	errs = append(errs, hookErrs...)
	close(serveErrs)
	for err := range serveErrs {
		cause = errors.Join(cause, err)
	}
	errs = append(errs, shutErrs...)
	reg.MarkStopped()

	// Stopped: close in reverse order, within the close budget.
	closeEnd := shutdownEnd.Add(lc.CloseTimeout)
	closeCtx, cancelClose := withDeadline(stopCtx, clock, closeEnd)
	errs = append(errs, lc.close(closeCtx))
	cancelClose()
	log.Info("health: stopped")
	return errors.Join(append([]error{cause}, errs...)...)
}

// listen returns a listener for every server, or closes those it has and
// returns the first error.
func listen(servers []Server) ([]net.Listener, error) {
	ls := make([]net.Listener, len(servers))
	for i, s := range servers {
		if s.Listener != nil {
			ls[i] = s.Listener
			continue
		}
		addr := s.HTTP.Addr
		if addr == "" {
			addr = ":http"
			if s.HTTP.TLSConfig != nil {
				addr = ":https"
			}
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			for j, s := range servers {
				if ls[j] != nil {
					_ = ls[j].Close()
				} else if s.Listener != nil {
					_ = s.Listener.Close()
				}
			}
			return nil, fmt.Errorf("health: listening on %s: %w", addr, err)
		}
		ls[i] = l
	}
	return ls, nil
}

// close runs the closers in reverse order; a panicking closer is an error.
func (lc *Lifecycle) close(ctx context.Context) error {
	var errs []error
	for i := len(lc.Closers) - 1; i >= 0; i-- {
		c := lc.Closers[i]
		if err := runCloser(ctx, c); err != nil {
			name := c.Name
			if name == "" {
				name = fmt.Sprintf("closer %d", i)
			}
			lc.Logger.Error("health: close", "closer", name, "error", err)
			errs = append(errs, fmt.Errorf("health: closing %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

func runCloser(ctx context.Context, c Closer) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return c.Close(ctx)
}

// withDeadline returns a context that ends at t on clock.
func withDeadline(parent context.Context, clock Clock, t time.Time) (context.Context, context.CancelFunc) {
	return timeoutContext(parent, clock, t.Sub(clock.Now()))
}

// sleepUntil blocks until t on clock.
func sleepUntil(clock Clock, t time.Time) {
	d := t.Sub(clock.Now())
	if d <= 0 {
		return
	}
	done := make(chan struct{})
	clock.AfterFunc(d, func() { close(done) })
	<-done
}
