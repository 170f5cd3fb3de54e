package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Defaults for checks that leave Timeout or Interval zero. Kubernetes probes
// time out after 1s by default, so a check that takes longer is useless to
// them anyway.
const (
	DefaultTimeout  = time.Second
	DefaultInterval = time.Second
)

var (
	// ErrInvalidCheck is returned, wrapped with the reason, by
	// Registry.Register for a check that cannot be registered.
	ErrInvalidCheck = errors.New("health: invalid check")
	// ErrDuplicateCheck is returned, wrapped with the name, by
	// Registry.Register when a check of that name is already registered.
	ErrDuplicateCheck = errors.New("health: duplicate check")
	// ErrInvalidOption is returned, wrapped with the reason, by NewRegistry
	// for an option it cannot use.
	ErrInvalidOption = errors.New("health: invalid option")
)

// View is one of the three questions an orchestrator asks an instance. A
// Check names the views it gates as a bit set: Readiness|Startup.
type View uint8

const (
	// Liveness asks "is the process stuck beyond repair?" A fail makes the
	// orchestrator restart the instance, so only checks of the process
	// itself (a deadlock detector) belong here, never a dependency: a
	// dependency outage would otherwise restart the whole fleet at once.
	// By default no check gates liveness.
	Liveness View = 1 << iota
	// Readiness asks "may the load balancer send this instance traffic?"
	// Dependency checks belong here. It fails while the instance is
	// starting, draining or stopped, whatever the checks say.
	Readiness
	// Startup asks "has the instance finished starting?" It fails until
	// MarkStarted, then reports the checks that gate startup.
	Startup
)

func (v View) String() string {
	switch v {
	case Liveness:
		return "liveness"
	case Readiness:
		return "readiness"
	case Startup:
		return "startup"
	}
	var parts []string
	for _, w := range []View{Liveness, Readiness, Startup} {
		if v&w != 0 {
			parts = append(parts, w.String())
		}
	}
	if v&^(Liveness|Readiness|Startup) != 0 || len(parts) == 0 {
		return fmt.Sprintf("View(%d)", uint8(v))
	}
	return strings.Join(parts, "|")
}

// single reports whether v is exactly one view.
func (v View) single() bool { return v == Liveness || v == Readiness || v == Startup }

// State is where the instance is in its lifecycle. Readiness passes only in
// StateReady; startup passes from StateReady on.
type State int32

const (
	// StateStarting is the state of a new Registry.
	StateStarting State = iota
	// StateReady follows MarkStarted.
	StateReady
	// StateDraining follows MarkDraining: readiness fails so that the load
	// balancer stops sending new traffic, while requests still complete.
	StateDraining
	// StateStopped follows MarkStopped: the servers are shut down.
	StateStopped
)

func (s State) String() string {
	switch s {
	case StateStarting:
		return "starting"
	case StateReady:
		return "ready"
	case StateDraining:
		return "draining"
	case StateStopped:
		return "stopped"
	}
	return fmt.Sprintf("State(%d)", int32(s))
}

// Check describes one health check. Set exactly one of Func and Result.
type Check struct {
	// Name is the key of the check in the response: "componentName" or
	// "componentName:measurementName", such as "mongodb:responseTime".
	// Required and unique in a registry; componentName may not contain ':'.
	Name string

	// Func runs the check: nil is pass, an error is fail with the error
	// text as output, and Warn(err) is warn.
	Func func(ctx context.Context) error

	// Result runs the check and reports a full result, with an observed
	// value and unit.
	Result func(ctx context.Context) Result

	// ComponentID and ComponentType fill the result's fields when the
	// check leaves them empty.
	ComponentID   string
	ComponentType string

	// Timeout bounds one run of the check. Zero means the registry's
	// default (DefaultTimeout unless WithCheckDefaults says otherwise).
	// The check's ctx is cancelled and carries a deadline at the timeout,
	// and the check reports fail even if the function ignores ctx.
	Timeout time.Duration

	// Interval is how long a result is reused before the check runs again.
	// Zero means the registry's default (DefaultInterval unless
	// WithCheckDefaults says otherwise); negative means no caching, though
	// concurrent probes still share one run. Fail results are cached too,
	// so a failing dependency is not hammered by probes.
	Interval time.Duration

	// Views says which views the check gates. Zero means Readiness.
	Views View
}

// Identity names the service and this instance in health responses.
// observability.Identity implements it; health takes the interface so that
// it does not import the telemetry SDK.
type Identity interface {
	ServiceName() string
	ServiceVersion() string
	InstanceID() string
}

// Option configures a Registry.
type Option interface{ apply(*options) }

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

type options struct {
	identity        Identity
	releaseID       string
	description     string
	descriptionSet  bool
	notes           []string
	configHash      func() string
	clock           Clock
	logger          *slog.Logger
	defaultTimeout  time.Duration
	defaultInterval time.Duration
	errs            []error
}

// WithIdentity sets the version, serviceId and (unless WithDescription
// says otherwise) description of every response from id, typically an
// observability.Identity.
func WithIdentity(id Identity) Option {
	return optionFunc(func(o *options) {
		if id == nil {
			o.errs = append(o.errs, errors.New("nil identity"))
			return
		}
		o.identity = id
	})
}

// WithReleaseID sets the releaseId field, such as a build or commit ID.
func WithReleaseID(id string) Option {
	return optionFunc(func(o *options) { o.releaseID = id })
}

// WithDescription sets the description field. The default is the service
// name of the identity.
func WithDescription(d string) Option {
	return optionFunc(func(o *options) { o.description, o.descriptionSet = d, true })
}

// WithNotes sets the notes field.
func WithNotes(notes ...string) Option {
	return optionFunc(func(o *options) { o.notes = append([]string(nil), notes...) })
}

// WithConfigHash reports hash() in the configHash field of every response,
// so that configuration drift across the fleet shows in health output. It
// is called on every response and must be fast and safe for concurrent use
// (a config Store's current hash).
func WithConfigHash(hash func() string) Option {
	return optionFunc(func(o *options) {
		if hash == nil {
			o.errs = append(o.errs, errors.New("nil config hash function"))
			return
		}
		o.configHash = hash
	})
}

// WithClock replaces the system clock, for tests.
func WithClock(c Clock) Option {
	return optionFunc(func(o *options) {
		if c == nil {
			o.errs = append(o.errs, errors.New("nil clock"))
			return
		}
		o.clock = c
	})
}

// WithLogger logs check status changes, panics and lifecycle steps to l.
// The default discards everything.
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(o *options) {
		if l == nil {
			o.errs = append(o.errs, errors.New("nil logger"))
			return
		}
		o.logger = l
	})
}

// WithCheckDefaults sets the timeout and caching interval of checks that
// leave theirs zero. timeout must be positive; interval may be zero or
// negative for no caching.
func WithCheckDefaults(timeout, interval time.Duration) Option {
	return optionFunc(func(o *options) {
		if timeout <= 0 {
			o.errs = append(o.errs, fmt.Errorf("default timeout %v is not positive", timeout))
			return
		}
		o.defaultTimeout, o.defaultInterval = timeout, interval
	})
}

// Registry holds the checks of one instance and its lifecycle state, and
// answers the three views. It is safe for concurrent use.
//
// A registry starts no goroutine of its own. A view runs each due check in
// a goroutine that ends when the check function returns; at most one run of
// a check is in flight at a time, even when its function ignores ctx and
// outlives its timeout.
type Registry struct {
	opts  options
	clock Clock
	log   *slog.Logger

	mu          sync.RWMutex
	state       State
	startupDone bool // the startup checks passed once in StateReady or later
	checks      map[string]*entry
	ordered     []*entry // registration order
}

// NewRegistry returns an empty registry in StateStarting.
func NewRegistry(opts ...Option) (*Registry, error) {
	o := options{
		clock:           systemClock{},
		logger:          slog.New(slog.DiscardHandler),
		defaultTimeout:  DefaultTimeout,
		defaultInterval: DefaultInterval,
	}
	for _, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("%w: nil option", ErrInvalidOption)
		}
		opt.apply(&o)
	}
	if err := errors.Join(o.errs...); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidOption, err)
	}
	if !o.descriptionSet && o.identity != nil {
		o.description = o.identity.ServiceName()
	}
	return &Registry{
		opts:   o,
		clock:  o.clock,
		log:    o.logger,
		checks: make(map[string]*entry),
	}, nil
}

// Register adds a check. Checks may be registered at any time, also while
// views are being served. Errors wrap ErrInvalidCheck or ErrDuplicateCheck.
func (r *Registry) Register(c Check) error {
	if err := validateName(c.Name); err != nil {
		return fmt.Errorf("%w: name %q: %v", ErrInvalidCheck, c.Name, err)
	}
	if (c.Func == nil) == (c.Result == nil) {
		return fmt.Errorf("%w: %q: set exactly one of Func and Result", ErrInvalidCheck, c.Name)
	}
	if c.Timeout < 0 {
		return fmt.Errorf("%w: %q: negative timeout %v", ErrInvalidCheck, c.Name, c.Timeout)
	}
	if c.Views&^(Liveness|Readiness|Startup) != 0 {
		return fmt.Errorf("%w: %q: unknown views %v", ErrInvalidCheck, c.Name, c.Views)
	}
	if c.Views == 0 {
		c.Views = Readiness
	}
	if c.Timeout == 0 {
		c.Timeout = r.opts.defaultTimeout
	}
	if c.Interval == 0 {
		c.Interval = r.opts.defaultInterval
	}
	e := &entry{check: c, reg: r}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.checks[c.Name]; dup {
		return fmt.Errorf("%w: %q", ErrDuplicateCheck, c.Name)
	}
	r.checks[c.Name] = e
	r.ordered = append(r.ordered, e)
	return nil
}

// validateName accepts "component" and "component:measurement" with
// printable characters.
func validateName(name string) error {
	if name == "" {
		return errors.New("empty")
	}
	component, _, _ := strings.Cut(name, ":")
	if component == "" {
		return errors.New("empty component name")
	}
	if strings.Count(name, ":") > 1 {
		return errors.New("more than one ':'")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return errors.New("control character")
		}
	}
	return nil
}

// State returns the lifecycle state.
func (r *Registry) State() State {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.state
}

// MarkStarted moves a starting registry to StateReady: the startup view
// now reports its checks and readiness passes when its checks do. It does
// nothing in any other state. Lifecycle.Run calls it once the servers
// listen and the OnStarted hooks succeeded.
func (r *Registry) MarkStarted() { r.transition(StateStarting, StateReady) }

// MarkDraining moves the registry to StateDraining, so readiness fails. It
// does nothing once stopped.
func (r *Registry) MarkDraining() {
	r.transition(StateStarting, StateDraining)
	r.transition(StateReady, StateDraining)
}

// MarkStopped moves the registry to StateStopped.
func (r *Registry) MarkStopped() {
	r.mu.Lock()
	from := r.state
	r.state = StateStopped
	r.mu.Unlock()
	if from != StateStopped {
		r.log.Info("health: state changed", "from", from.String(), "to", StateStopped.String())
	}
}

func (r *Registry) transition(from, to State) {
	r.mu.Lock()
	ok := r.state == from
	if ok {
		r.state = to
	}
	r.mu.Unlock()
	if ok {
		r.log.Info("health: state changed", "from", from.String(), "to", to.String())
	}
}

// Report runs the checks that gate view (reusing cached results) and
// combines them into a response. view must be exactly one of Liveness,
// Readiness and Startup; any other value reports fail. Checks run
// concurrently; Report returns when each has a result or timed out, or
// when ctx ends (a check still running then reports fail).
func (r *Registry) Report(ctx context.Context, view View) Response {
	resp := Response{
		ReleaseID:   r.opts.releaseID,
		Notes:       slices.Clone(r.opts.notes),
		Description: r.opts.description,
	}
	if id := r.opts.identity; id != nil {
		resp.Version = id.ServiceVersion()
		resp.ServiceID = id.InstanceID()
	}
	if r.opts.configHash != nil {
		resp.ConfigHash = r.opts.configHash()
	}
	if !view.single() {
		resp.Status = StatusFail
		resp.Output = fmt.Sprintf("unknown view %v", view)
		return resp
	}

	r.mu.RLock()
	state, startupDone := r.state, r.startupDone
	gates := view
	if view == Readiness && !startupDone {
		// Until startup has completed, the startup checks gate readiness
		// too: a load balancer that only asks for readiness must not send
		// traffic to an instance still warming up.
		gates |= Startup
	}
	var entries []*entry
	for _, e := range r.ordered {
		if e.check.Views&gates != 0 {
			entries = append(entries, e)
		}
	}
	r.mu.RUnlock()

	// The state decides before the checks do. Once draining, readiness does
	// not run its checks: the dependencies may be closing, and the answer
	// is fail regardless.
	var stateFail string
	switch view {
	case Readiness:
		if state != StateReady {
			stateFail = state.String()
		}
		if state >= StateDraining {
			entries = nil
		}
	case Startup:
		if state == StateStarting {
			stateFail = "starting"
		}
	}

	results := make([]Result, len(entries))
	var wg sync.WaitGroup
	for i, e := range entries {
		if res, ok := e.cached(); ok {
			results[i] = res
			continue
		}
		wg.Go(func() { results[i] = e.get(ctx) })
	}
	wg.Wait()
	if view == Readiness && stateFail == "" {
		// The state may have moved while the checks ran: an answer that
		// leaves after draining began must not say pass.
		if now := r.State(); now != StateReady {
			stateFail = now.String()
		}
	}

	if !startupDone && state >= StateReady && (view == Startup || view == Readiness) {
		r.noteStartup(entries, results)
	}

	resp.Status = StatusPass
	if len(entries) > 0 {
		resp.Checks = make(map[string][]CheckResult, len(entries))
	}
	var bad []string
	for i, e := range entries {
		res := results[i]
		resp.Status = resp.Status.worse(res.Status)
		if res.Status != StatusPass {
			bad = append(bad, e.check.Name)
		}
		resp.Checks[e.check.Name] = []CheckResult{{
			ComponentID:   res.ComponentID,
			ComponentType: res.ComponentType,
			ObservedValue: res.ObservedValue,
			ObservedUnit:  res.ObservedUnit,
			Status:        res.Status,
			Time:          res.Time,
			Output:        res.Output,
		}}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		resp.Output = "checks not passing: " + strings.Join(bad, ", ")
	}
	if stateFail != "" {
		resp.Status = StatusFail
		if resp.Output != "" {
			stateFail += "; " + resp.Output
		}
		resp.Output = stateFail
	}
	return resp
}

// noteStartup records that startup has completed when every startup check
// among entries passed or warned.
func (r *Registry) noteStartup(entries []*entry, results []Result) {
	for i, e := range entries {
		if e.check.Views&Startup != 0 && results[i].Status.rank() >= StatusFail.rank() {
			return
		}
	}
	r.mu.Lock()
	done := r.startupDone
	r.startupDone = true
	r.mu.Unlock()
	if !done {
		r.log.Info("health: startup complete")
	}
}
