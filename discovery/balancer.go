package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Defaults used for the zero fields of a BalancerConfig.
const (
	DefaultConsecutiveFailures        = 5
	DefaultConsecutiveConnectFailures = 1
	DefaultBaseEjectionTime           = 10 * time.Second
	DefaultMaxEjectionTime            = 5 * time.Minute
	DefaultMaxEjectedPercent          = 50
)

// BalancerConfig configures a Balancer. The zero value means the defaults.
type BalancerConfig struct {
	// ConsecutiveFailures is how many Failure outcomes in a row eject an
	// instance: DefaultConsecutiveFailures (5) when zero.
	ConsecutiveFailures int
	// ConsecutiveConnectFailures is how many Unreachable outcomes in a
	// row eject an instance: DefaultConsecutiveConnectFailures (1) when
	// zero. An instance that refuses or drops connections is most likely
	// gone, so by default it is ejected at its first such failure.
	ConsecutiveConnectFailures int
	// BaseEjectionTime is how long the first ejection of an instance
	// lasts (DefaultBaseEjectionTime when zero). The n-th ejection in a
	// row lasts n times as long, up to MaxEjectionTime (n itself stops
	// growing there); each period of BaseEjectionTime that a re-admitted
	// instance serves successfully takes one off n. Failures of requests
	// that end while their instance is ejected (requests already in flight
	// when it was ejected) are not counted.
	BaseEjectionTime time.Duration
	// MaxEjectionTime caps one ejection (DefaultMaxEjectionTime when
	// zero; at least BaseEjectionTime).
	MaxEjectionTime time.Duration
	// MaxEjectedPercent caps the share of instances ejected at once
	// (DefaultMaxEjectedPercent when zero, at most 100; negative means
	// no instance is ever ejected). When the share allows none but
	// there are two instances or more, one may still be ejected; the
	// last instance is never ejected. The cap keeps a fault that makes
	// every instance fail (a shared database down) from ejecting the
	// whole service and piling all traffic on the survivors.
	MaxEjectedPercent int
	// Now is the clock for ejections; nil means time.Now.
	Now func() time.Time
	// Logger receives ejections at Info level; nil means no logging.
	Logger *slog.Logger
	// Service names the balanced service in logs and metrics (the
	// attribute activekit.discovery.service); Transport sets it.
	Service string
	// MeterProvider creates the balancer's counters (see NewBalancer);
	// nil means otel.GetMeterProvider(), a no-op unless the application
	// set one.
	MeterProvider metric.MeterProvider
}

func (c BalancerConfig) normalize() (BalancerConfig, error) {
	switch {
	case c.ConsecutiveFailures < 0:
		return c, fmt.Errorf("%w: negative consecutive failures %d", ErrInvalidConfig, c.ConsecutiveFailures)
	case c.ConsecutiveConnectFailures < 0:
		return c, fmt.Errorf("%w: negative consecutive connect failures %d", ErrInvalidConfig, c.ConsecutiveConnectFailures)
	case c.BaseEjectionTime < 0:
		return c, fmt.Errorf("%w: negative base ejection time %v", ErrInvalidConfig, c.BaseEjectionTime)
	case c.MaxEjectionTime < 0:
		return c, fmt.Errorf("%w: negative max ejection time %v", ErrInvalidConfig, c.MaxEjectionTime)
	case c.MaxEjectedPercent > 100:
		return c, fmt.Errorf("%w: max ejected percent %d is above 100", ErrInvalidConfig, c.MaxEjectedPercent)
	}
	if c.ConsecutiveFailures == 0 {
		c.ConsecutiveFailures = DefaultConsecutiveFailures
	}
	if c.ConsecutiveConnectFailures == 0 {
		c.ConsecutiveConnectFailures = DefaultConsecutiveConnectFailures
	}
	if c.BaseEjectionTime == 0 {
		c.BaseEjectionTime = DefaultBaseEjectionTime
	}
	if c.MaxEjectionTime == 0 {
		c.MaxEjectionTime = max(DefaultMaxEjectionTime, c.BaseEjectionTime)
	}
	if c.MaxEjectionTime < c.BaseEjectionTime {
		return c, fmt.Errorf("%w: max ejection time %v is below the base ejection time %v", ErrInvalidConfig, c.MaxEjectionTime, c.BaseEjectionTime)
	}
	if c.MaxEjectedPercent == 0 {
		c.MaxEjectedPercent = DefaultMaxEjectedPercent
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
	return c, nil
}

// Metric names, in the instrumentation scope ScopeName. Every one carries
// the attribute activekit.discovery.service when the service is named.
const (
	ScopeName        = "github.com/activekit/activekit/discovery"
	MetricPicks      = "activekit.discovery.picks"
	MetricEjections  = "activekit.discovery.ejections"
	MetricRetries    = "activekit.discovery.retries"
	AttributeService = "activekit.discovery.service"
)

// instruments are the counters of a balancer or transport, with their
// attribute set computed once.
type instruments struct {
	picks, ejections, retries metric.Int64Counter
	opts                      []metric.AddOption
}

func newInstruments(mp metric.MeterProvider, service string) (*instruments, error) {
	m := mp.Meter(ScopeName)
	var (
		in  instruments
		err error
	)
	if in.picks, err = m.Int64Counter(MetricPicks, metric.WithUnit("{pick}"),
		metric.WithDescription("Instances picked by the balancer, one per attempt.")); err != nil {
		return nil, fmt.Errorf("discovery: picks counter: %w", err)
	}
	if in.ejections, err = m.Int64Counter(MetricEjections, metric.WithUnit("{ejection}"),
		metric.WithDescription("Instances ejected after consecutive failures.")); err != nil {
		return nil, fmt.Errorf("discovery: ejections counter: %w", err)
	}
	if in.retries, err = m.Int64Counter(MetricRetries, metric.WithUnit("{retry}"),
		metric.WithDescription("Requests sent again to another instance by the transport.")); err != nil {
		return nil, fmt.Errorf("discovery: retries counter: %w", err)
	}
	if service != "" {
		in.opts = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String(AttributeService, service)))}
	}
	return &in, nil
}

// Outcome is what became of a request sent to an instance, as reported to
// Lease.Done.
type Outcome int

const (
	// Success: the instance answered (any status below 500).
	Success Outcome = iota
	// Failure: the instance answered with a server error (5xx). It counts
	// towards ConsecutiveFailures.
	Failure
	// Unreachable: the instance could not be reached or dropped the
	// connection. It counts towards both ConsecutiveConnectFailures and
	// ConsecutiveFailures.
	Unreachable
	// Ignored: the request ended for a reason that says nothing about the
	// instance (the caller cancelled it). Only the in-flight count moves.
	Ignored
)

// String returns the outcome's name.
func (o Outcome) String() string {
	switch o {
	case Success:
		return "success"
	case Failure:
		return "failure"
	case Unreachable:
		return "unreachable"
	case Ignored:
		return "ignored"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Balancer spreads requests over the instances of one service: it picks by
// the power of two choices on in-flight requests (two instances at random,
// the less busy one wins), and ejects an instance after consecutive failures
// for a back-off that grows with repeated ejections, never ejecting more
// than MaxEjectedPercent of the instances at once.
//
// Feed it with Update (from a Resolver watch) and call Pick for every
// request, then Done on the lease. A Balancer is safe for concurrent use and
// starts no goroutine; re-admission happens lazily, on the first Pick after
// the ejection has expired. Pick takes no lock.
type Balancer struct {
	cfg      BalancerConfig
	eps      atomic.Pointer[[]*endpoint] // sorted by key; replaced by Update
	mu       sync.Mutex                  // serialises Update and ejections
	rand     func(n int) int
	maxMult  int // the ejection multiplier at which an ejection reaches MaxEjectionTime
	counters *instruments
}

// endpoint is the balancer's state for one instance.
type endpoint struct {
	inst     atomic.Pointer[Instance] // replaced by Update; never mutated
	key      string
	inflight atomic.Int64
	ejected  atomic.Int64 // unix nanoseconds until which it is ejected; 0 when not (an expired one may be cleared to 0)

	mu           sync.Mutex // guards the fields below
	failures     int
	connFailures int
	ejections    int       // current multiplier of BaseEjectionTime
	calm         time.Time // when the last ejection ended, or the multiplier last decayed
}

// NewBalancer returns an empty Balancer configured by cfg. It creates two
// counters with cfg.MeterProvider: activekit.discovery.picks (every
// successful Pick) and activekit.discovery.ejections.
func NewBalancer(cfg BalancerConfig) (*Balancer, error) {
	c, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	in, err := newInstruments(c.MeterProvider, c.Service)
	if err != nil {
		return nil, err
	}
	maxMult := int((c.MaxEjectionTime + c.BaseEjectionTime - 1) / c.BaseEjectionTime)
	b := &Balancer{cfg: c, rand: rand.IntN, maxMult: maxMult, counters: in}
	b.eps.Store(&[]*endpoint{})
	return b, nil
}

func instanceKey(inst *Instance) string {
	if inst.ID != "" {
		return inst.ID
	}
	return inst.HostPort()
}

// Update replaces the instances the balancer picks from. The state of an
// instance that stays (in-flight count, failures, ejection) is kept, matched
// by ID (or by address when the ID is empty); the first of two instances
// with one key wins. An instance whose ID stays but whose address changed is
// a new process (a replacement that kept the ID) and starts afresh: the
// ejection of the one it replaces does not keep it out. An empty list empties the balancer: Pick then returns
// ErrNoInstances.
func (b *Balancer) Update(instances []Instance) {
	b.mu.Lock()
	defer b.mu.Unlock()
	old := *b.eps.Load()
	next := make([]*endpoint, 0, len(instances))
	for i := range instances {
		key := instanceKey(&instances[i])
		if slices.ContainsFunc(next, func(e *endpoint) bool { return e.key == key }) {
			continue
		}
		if k, ok := slices.BinarySearchFunc(old, key, cmpKey); ok && old[k].inst.Load().HostPort() == instances[i].HostPort() {
			e := old[k]
			inst := instances[i].Clone()
			e.inst.Store(&inst)
			next = append(next, e)
			continue
		}
		e := &endpoint{key: key}
		inst := instances[i].Clone()
		e.inst.Store(&inst)
		next = append(next, e)
	}
	slices.SortFunc(next, func(a, b *endpoint) int { return cmpKey(a, b.key) })
	b.eps.Store(&next)
}

func cmpKey(e *endpoint, key string) int {
	switch {
	case e.key < key:
		return -1
	case e.key > key:
		return 1
	}
	return 0
}

// Lease is one pick: the instance to send a request to. Call Done exactly
// once when the request is over; Done after the first call does nothing.
type Lease struct {
	b    *Balancer
	e    *endpoint
	inst Instance
	done atomic.Bool
}

// Instance returns the picked instance. Its Tags and Meta are shared with
// the balancer: read them, never modify them (Clone first).
func (l *Lease) Instance() Instance { return l.inst }

// Done reports the outcome of the request, releasing its in-flight slot and
// counting it towards ejection.
func (l *Lease) Done(o Outcome) {
	if !l.done.CompareAndSwap(false, true) {
		return
	}
	l.e.inflight.Add(-1)
	l.b.record(l.e, o)
}

// Pick chooses an instance for one request by the power of two choices,
// among those not ejected and whose ID (or address, for an instance
// without ID) is not in exclude. It returns ErrNoInstances when there is
// none. When exclude is empty and every instance is ejected (possible only
// after the list changed), it picks among the ejected ones rather than fail.
func (b *Balancer) Pick(exclude ...string) (*Lease, error) {
	eps := *b.eps.Load()
	if len(eps) == 0 {
		return nil, ErrNoInstances
	}
	// The clock is read only when some instance has an ejection on
	// record; one that has expired is cleared, so that a healthy fleet
	// picks without reading the clock.
	var now int64
	usable := func(e *endpoint, ejectedOK bool) bool {
		if slices.Contains(exclude, e.key) {
			return false
		}
		u := e.ejected.Load()
		if ejectedOK || u == 0 {
			return true
		}
		if now == 0 {
			now = b.cfg.Now().UnixNano()
		}
		if u <= now {
			e.ejected.CompareAndSwap(u, 0) // expired; a new ejection wins the race
			return true
		}
		return false
	}
	e := b.p2c(eps, func(e *endpoint) bool { return usable(e, false) })
	if e == nil && len(exclude) == 0 {
		e = b.p2c(eps, func(e *endpoint) bool { return usable(e, true) })
	}
	if e == nil {
		return nil, ErrNoInstances
	}
	e.inflight.Add(1)
	b.counters.picks.Add(context.Background(), 1, b.counters.opts...)
	return &Lease{b: b, e: e, inst: *e.inst.Load()}, nil
}

// hasCandidate reports whether Pick(exclude...) could pick an instance
// not ejected, with exclude non-empty.
func (b *Balancer) hasCandidate(exclude []string) bool {
	now := b.cfg.Now().UnixNano()
	for _, e := range *b.eps.Load() {
		if e.ejected.Load() <= now && !slices.Contains(exclude, e.key) {
			return true
		}
	}
	return false
}

// p2c picks two distinct usable endpoints at random and returns the one
// with fewer requests in flight (the first on a tie), or the only usable
// one, or nil. Usability is read once per endpoint, since ejections change
// it concurrently.
func (b *Balancer) p2c(eps []*endpoint, usable func(*endpoint) bool) *endpoint {
	var buf [32]*endpoint
	cand := buf[:0]
	for _, e := range eps {
		if usable(e) {
			cand = append(cand, e)
		}
	}
	switch len(cand) {
	case 0:
		return nil
	case 1:
		return cand[0]
	}
	i := b.rand(len(cand))
	j := b.rand(len(cand) - 1)
	if j >= i {
		j++
	}
	a, c := cand[i], cand[j]
	if c.inflight.Load() < a.inflight.Load() {
		return c
	}
	return a
}

// record counts an outcome against e and ejects it when it crossed a
// threshold and the cap allows.
func (b *Balancer) record(e *endpoint, o Outcome) {
	switch o {
	case Success:
		e.mu.Lock()
		e.failures, e.connFailures = 0, 0
		if e.ejections > 0 { // the clock is read only after an ejection
			now := b.cfg.Now()
			if now.Sub(e.calm) >= b.cfg.BaseEjectionTime && e.ejected.Load() <= now.UnixNano() {
				e.ejections--
				e.calm = now
			}
		}
		e.mu.Unlock()
		return
	case Failure, Unreachable:
	default:
		return // Ignored says nothing about the instance
	}
	now := b.cfg.Now()
	if e.ejected.Load() > now.UnixNano() {
		// The request was in flight when its instance was ejected: its
		// failure is the one that ejected it, seen again.
		return
	}
	e.mu.Lock()
	switch o {
	case Failure:
		e.failures++
	case Unreachable:
		e.failures++
		e.connFailures++
	}
	eject := e.failures >= b.cfg.ConsecutiveFailures || e.connFailures >= b.cfg.ConsecutiveConnectFailures
	e.mu.Unlock()
	if eject {
		b.eject(e, now)
	}
}

// eject ejects e unless it is already ejected, no longer in the list, or the
// cap forbids.
func (b *Balancer) eject(e *endpoint, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	nanos := now.UnixNano()
	if e.ejected.Load() > nanos {
		return // a concurrent failure ejected it already
	}
	eps := *b.eps.Load()
	if k, ok := slices.BinarySearchFunc(eps, e.key, cmpKey); !ok || eps[k] != e {
		return
	}
	ejected := 0
	for _, o := range eps {
		if o.ejected.Load() > nanos {
			ejected++
		}
	}
	if ejected+1 > b.maxEjected(len(eps)) {
		b.cfg.Logger.Debug("discovery: ejection refused by cap", "service", b.cfg.Service, "instance", e.key, "ejected", ejected, "instances", len(eps))
		return
	}
	e.mu.Lock()
	e.ejections = min(e.ejections+1, b.maxMult)
	d := min(time.Duration(e.ejections)*b.cfg.BaseEjectionTime, b.cfg.MaxEjectionTime)
	until := now.Add(d)
	e.calm = until
	e.failures, e.connFailures = 0, 0
	n := e.ejections
	e.mu.Unlock()
	e.ejected.Store(until.UnixNano())
	b.counters.ejections.Add(context.Background(), 1, b.counters.opts...)
	b.cfg.Logger.Info("discovery: instance ejected", "service", b.cfg.Service, "instance", e.key, "for", d, "ejections", n)
}

// maxEjected returns how many of n instances may be ejected at once.
func (b *Balancer) maxEjected(n int) int {
	p := b.cfg.MaxEjectedPercent
	if p < 0 || n < 2 {
		return 0
	}
	return min(max(n*p/100, 1), n-1)
}

// EndpointStatus is a Balancer's view of one instance.
type EndpointStatus struct {
	Instance Instance
	// InFlight is how many leases of it are not Done.
	InFlight int
	// EjectedUntil is when its current ejection ends; zero when it is not
	// ejected.
	EjectedUntil time.Time
	// Ejections is the multiplier of its current or last ejection: its
	// next one lasts Ejections+1 times BaseEjectionTime, up to
	// MaxEjectionTime. It decays while the instance serves well.
	Ejections int
}

// Endpoints returns the balancer's view of each instance, ordered by key.
func (b *Balancer) Endpoints() []EndpointStatus {
	eps := *b.eps.Load()
	now := b.cfg.Now().UnixNano()
	out := make([]EndpointStatus, len(eps))
	for i, e := range eps {
		e.mu.Lock()
		s := EndpointStatus{Instance: e.inst.Load().Clone(), InFlight: int(e.inflight.Load()), Ejections: e.ejections}
		e.mu.Unlock()
		if u := e.ejected.Load(); u > now {
			s.EjectedUntil = time.Unix(0, u)
		}
		out[i] = s
	}
	return out
}
