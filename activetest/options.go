package activetest

import (
	"fmt"
	"strings"
	"time"
)

// Policy is how the balancer picks an instance for a request.
type Policy int

const (
	// RoundRobin sends each request to the next live instance in turn.
	RoundRobin Policy = iota
	// Random sends each request to a live instance picked uniformly at
	// random.
	Random
)

func (p Policy) String() string {
	switch p {
	case RoundRobin:
		return "round-robin"
	case Random:
		return "random"
	}
	return fmt.Sprintf("Policy(%d)", int(p))
}

// DefaultConnectRetries is how many other instances the balancer tries,
// by default, after a connection to the one it picked fails to open.
const DefaultConnectRetries = 2

// An Option configures a Fleet.
type Option interface{ apply(*options) }

type options struct {
	policy         Policy
	connectRetries int
	probe          *Probe // nil: no readiness probing
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithPolicy sets how the balancer picks an instance (default RoundRobin).
func WithPolicy(p Policy) Option { return optionFunc(func(o *options) { o.policy = p }) }

// WithConnectRetries sets how many other live instances the balancer tries
// when the connection to the instance it picked fails to open (default
// DefaultConnectRetries). Only requests no handler took are retried,
// whatever their method: those no byte of which was written to an instance,
// and, without WithReadinessProbe, those an instance being drained closed
// unread (Fleet.Drain); 0 turns
// retries off, so that a request that picked an instance killed an instant
// before reaches the client as a 503.
func WithConnectRetries(n int) Option {
	return optionFunc(func(o *options) { o.connectRetries = n })
}

// Defaults of a Probe whose fields are zero: Kubernetes' readiness probe
// defaults for the timeout and the thresholds, and an interval short
// enough for go test (Kubernetes probes every 10s, HAProxy every 2s).
const (
	DefaultProbePath             = "/readyz"
	DefaultProbeInterval         = 100 * time.Millisecond
	DefaultProbeTimeout          = time.Second
	DefaultProbeFailureThreshold = 3
	DefaultProbeSuccessThreshold = 1
)

// Probe is how the balancer checks that an instance is ready
// (WithReadinessProbe). The zero Probe means the defaults.
type Probe struct {
	// Path is requested with GET from each instance (default
	// DefaultProbePath). An answer from 200 to 399 passes, as for a
	// Kubernetes httpGet probe or HAProxy's option httpchk; any other
	// answer, a connection that fails or an answer later than Timeout
	// fails.
	Path string
	// Interval is the time between the starts of two probes of one
	// instance (default DefaultProbeInterval); a probe slower than
	// Interval delays the next one, as probes of one instance never
	// overlap (Kubernetes' periodSeconds, HAProxy's inter).
	Interval time.Duration
	// Timeout bounds one probe (default DefaultProbeTimeout;
	// Kubernetes' timeoutSeconds, HAProxy's timeout check).
	Timeout time.Duration
	// FailureThreshold is how many probes in a row must fail for an
	// instance in rotation to leave it (default
	// DefaultProbeFailureThreshold; Kubernetes' failureThreshold,
	// HAProxy's fall).
	FailureThreshold int
	// SuccessThreshold is how many probes in a row must pass for an
	// instance out of rotation, a new one included, to enter it
	// (default DefaultProbeSuccessThreshold; Kubernetes'
	// successThreshold, HAProxy's rise).
	SuccessThreshold int
}

func (p Probe) withDefaults() Probe {
	if p.Path == "" {
		p.Path = DefaultProbePath
	}
	if p.Interval == 0 {
		p.Interval = DefaultProbeInterval
	}
	if p.Timeout == 0 {
		p.Timeout = DefaultProbeTimeout
	}
	if p.FailureThreshold == 0 {
		p.FailureThreshold = DefaultProbeFailureThreshold
	}
	if p.SuccessThreshold == 0 {
		p.SuccessThreshold = DefaultProbeSuccessThreshold
	}
	return p
}

func (p Probe) validate() error {
	switch {
	case !strings.HasPrefix(p.Path, "/"):
		return fmt.Errorf("activetest: probe path %q does not start with /", p.Path)
	case p.Interval < 0:
		return fmt.Errorf("activetest: negative probe interval %v", p.Interval)
	case p.Timeout < 0:
		return fmt.Errorf("activetest: negative probe timeout %v", p.Timeout)
	case p.FailureThreshold < 0:
		return fmt.Errorf("activetest: negative probe failure threshold %d", p.FailureThreshold)
	case p.SuccessThreshold < 0:
		return fmt.Errorf("activetest: negative probe success threshold %d", p.SuccessThreshold)
	}
	return nil
}

// WithReadinessProbe makes the balancer probe each instance's readiness, as
// a load balancer that health-checks its servers does (HAProxy's option
// httpchk, Envoy's active health checks, a Kubernetes readinessProbe
// behind a Service), instead of knowing at once what the fleet does to an
// instance. Then:
//
//   - Only probes move an instance in and out of the rotation: it leaves
//     after p.FailureThreshold probes in a row failed, and enters after
//     p.SuccessThreshold passed. A new instance, at NewFleet or Restart,
//     starts out of it and is probed at once: it gets no request before
//     its readiness passes.
//   - Kill and Drain do not tell the balancer: it goes on sending
//     requests to the instance until its probes fail. Those it sends once
//     the listener has closed fail to connect and go to another instance
//     (WithConnectRetries; with 0 the client gets a 503, as behind a
//     Kubernetes Service); one sent on a kept-alive connection the
//     instance closes fails with a 502, as behind a real balancer. So a
//     service whose drain fails its readiness, waits longer than
//     FailureThreshold × Interval, and only then stops (health.Lifecycle)
//     loses no request, and one that stops at once is seen to.
//   - Probes go from the balancer to the instance over a new connection
//     each, through the slot's Fault (a refused or slow path fails them);
//     they are not requests of the load: Fleet.Served and a Load's Report
//     do not count them.
//
// Each instance has one goroutine probing it, from its start until it is
// down and out of the rotation (or replaced in its slot), or the fleet's
// cleanup; NewFleet and Restart return once each new instance has entered
// the rotation or failed a probe. A bad Probe fails NewFleet.
func WithReadinessProbe(p Probe) Option {
	return optionFunc(func(o *options) { o.probe = &p })
}

func (o options) validate() error {
	if o.probe != nil {
		if err := o.probe.validate(); err != nil {
			return err
		}
	}
	if o.policy != RoundRobin && o.policy != Random {
		return fmt.Errorf("activetest: unknown %v", o.policy)
	}
	if o.connectRetries < 0 {
		return fmt.Errorf("activetest: negative connect retries %d", o.connectRetries)
	}
	return nil
}
