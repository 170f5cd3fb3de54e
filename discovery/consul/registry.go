package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/retry"
	"github.com/hashicorp/consul/api"
)

// Defaults used for the zero fields of a RegistryConfig.
const (
	DefaultTTL                     = 15 * time.Second
	DefaultDeregisterCriticalAfter = time.Minute
	DefaultHTTPCheckInterval       = 5 * time.Second
	DefaultHTTPCheckTimeout        = 2 * time.Second
)

// Meta keys this package writes into every registration.
const (
	MetaVersion    = "version"
	MetaConfigHash = "config_hash"
)

// RegistryConfig configures a Registry. The zero value means the defaults.
type RegistryConfig struct {
	// TTL is the TTL of the heartbeat check (DefaultTTL when zero, at
	// least 1s). The heartbeat passes it every TTL/3 (less up to 10% of
	// jitter, so that instances started together do not beat together),
	// each update bounded to TTL/3, so a dead instance turns critical, and
	// leaves every watch, at most one TTL after its last heartbeat.
	TTL time.Duration
	// DeregisterCriticalAfter removes an instance whose check has been
	// critical that long (DefaultDeregisterCriticalAfter when zero).
	// Consul enforces at least a minute and reaps every 30s.
	DeregisterCriticalAfter time.Duration
	// HTTPCheck, when set, is a URL that the agent probes as a second
	// check (the instance's readiness endpoint); the instance is passing
	// only while both checks pass. The HTTP check starts critical, so a
	// new instance is passing only once the agent has probed it (within
	// one HTTPCheckInterval of registering, at a random point of it).
	HTTPCheck string
	// HTTPCheckInterval and HTTPCheckTimeout configure the HTTP check;
	// DefaultHTTPCheckInterval and DefaultHTTPCheckTimeout when zero.
	HTTPCheckInterval time.Duration
	HTTPCheckTimeout  time.Duration
	// Version and ConfigHash, when set, are written to the instance's
	// Meta under MetaVersion and MetaConfigHash, so that the version and
	// configuration of every instance of the fleet can be compared. They
	// are the values at registration: an instance whose configuration
	// changes at run time passes the new hash to Registration.SetMeta, so
	// that the catalog keeps showing the configuration it runs.
	Version    string
	ConfigHash string
	// Logger receives heartbeat failures and re-registrations; nil means
	// no logging.
	Logger *slog.Logger
}

func (c RegistryConfig) normalize() (RegistryConfig, error) {
	switch {
	case c.TTL < 0 || c.TTL > 0 && c.TTL < time.Second:
		return c, fmt.Errorf("%w: TTL %v is below 1s", discovery.ErrInvalidConfig, c.TTL)
	case c.DeregisterCriticalAfter < 0:
		return c, fmt.Errorf("%w: negative deregister-critical-after %v", discovery.ErrInvalidConfig, c.DeregisterCriticalAfter)
	case c.HTTPCheckInterval < 0 || c.HTTPCheckTimeout < 0:
		return c, fmt.Errorf("%w: negative HTTP check interval or timeout", discovery.ErrInvalidConfig)
	case c.HTTPCheck != "" && !strings.HasPrefix(c.HTTPCheck, "http://") && !strings.HasPrefix(c.HTTPCheck, "https://"):
		return c, fmt.Errorf("%w: HTTP check %q is not an http(s) URL", discovery.ErrInvalidConfig, c.HTTPCheck)
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.DeregisterCriticalAfter == 0 {
		c.DeregisterCriticalAfter = DefaultDeregisterCriticalAfter
	}
	if c.HTTPCheckInterval == 0 {
		c.HTTPCheckInterval = DefaultHTTPCheckInterval
	}
	if c.HTTPCheckTimeout == 0 {
		c.HTTPCheckTimeout = DefaultHTTPCheckTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// Registry registers instances with the local Consul agent.
type Registry struct {
	client *api.Client
	cfg    RegistryConfig
}

var (
	_ discovery.Registry     = (*Registry)(nil)
	_ discovery.Registration = (*Registration)(nil)
	_ discovery.Drainer      = (*Registration)(nil)
)

// NewRegistry returns a Registry that registers through client's agent.
func NewRegistry(client *api.Client, cfg RegistryConfig) (*Registry, error) {
	if client == nil {
		return nil, fmt.Errorf("%w: nil Consul client", discovery.ErrInvalidConfig)
	}
	c, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	return &Registry{client: client, cfg: c}, nil
}

// Register registers inst with the agent, its TTL check passing, and starts
// the heartbeat goroutine owned by the returned *Registration (the concrete
// type of the result), which Close stops. The service ID is inst.ID.
//
// When the registration fails without the agent's answer (ctx ended, or the
// connection failed), the agent may have applied it all the same, and
// there is no Registration to Close: Register then deregisters inst.ID,
// best effort, on the caller's goroutine and within a bound of its own
// (2s, so it may return up to that much after ctx ends), before it returns
// the registration's error. A registration the agent refused (a
// 4xx answer) registered nothing and is not followed by a deregistration;
// nor is a Register whose ctx had already ended, which sends nothing.
// An agent that applies the lost registration only after the
// deregistration (it was still queued there) keeps it until its TTL check
// lapses and DeregisterCriticalAfter passes, as for a crashed instance.
func (r *Registry) Register(ctx context.Context, inst discovery.Instance) (discovery.Registration, error) {
	return r.RegisterInstance(ctx, inst)
}

// RegisterInstance is Register returning the concrete type.
func (r *Registry) RegisterInstance(ctx context.Context, inst discovery.Instance) (*Registration, error) {
	if err := inst.Validate(); err != nil {
		return nil, err
	}
	inst = inst.Clone()
	if r.cfg.Version != "" || r.cfg.ConfigHash != "" {
		inst.Meta = maps.Clone(inst.Meta)
		if inst.Meta == nil {
			inst.Meta = map[string]string{}
		}
		if r.cfg.Version != "" {
			inst.Meta[MetaVersion] = r.cfg.Version
		}
		if r.cfg.ConfigHash != "" {
			inst.Meta[MetaConfigHash] = r.cfg.ConfigHash
		}
	}
	g := &Registration{
		client:  r.client,
		cfg:     r.cfg,
		inst:    inst,
		checkID: "activekit:" + inst.ID + ":ttl",
		status:  api.HealthPassing,
		io:      make(chan struct{}, 1),
		stopped: make(chan struct{}),
	}
	period := r.cfg.TTL / 3
	bo, err := retry.NewBackoff(retry.Policy{
		InitialInterval: min(200*time.Millisecond, period),
		MaxInterval:     period,
		MaxAttempts:     -1,
		MaxElapsedTime:  -1,
		Jitter:          retry.EqualJitter,
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", discovery.ErrInvalidConfig, err)
	}
	if err := ctx.Err(); err != nil { // nothing sent, nothing to withdraw
		return nil, fmt.Errorf("consul: registering %s: %w", inst.ID, err)
	}
	if err := g.register(ctx, true); err != nil {
		if outcomeUnknown(err) {
			g.withdraw(ctx, err)
		}
		return nil, err
	}
	hctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	go g.heartbeat(hctx, period, bo)
	return g, nil
}

// Registration is an instance registered with the agent. Its heartbeat
// goroutine passes the TTL check every TTL/3 (or keeps it critical after
// SetCritical) and re-registers the service when the agent has forgotten
// it; SetMeta changes its Meta while it runs; Close stops the heartbeat and
// deregisters. It is safe for concurrent use: its writes to the agent
// (heartbeat, SetCritical, SetMeta, Close) are sent one at a time, so a
// heartbeat in flight never lands after SetCritical, and nothing is
// registered again after Close.
type Registration struct {
	client  *api.Client
	cfg     RegistryConfig
	inst    discovery.Instance // Meta guarded by mu, replaced, never modified
	checkID string

	io chan struct{} // one-slot semaphore held by each write to the agent

	mu       sync.Mutex
	status   string // api.HealthPassing or api.HealthCritical
	note     string
	metaGen  uint64 // counts the changes of inst.Meta by SetMeta
	sentMeta uint64 // the metaGen of the last registration the agent accepted
	closed   bool

	cancel  context.CancelFunc // stops the heartbeat
	stopped chan struct{}      // closed when the heartbeat has returned
}

// Instance returns the registered instance, Meta included (with the
// changes of SetMeta, whether or not the agent has them yet).
func (g *Registration) Instance() discovery.Instance {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.inst.Clone()
}

// CheckID returns the ID of the TTL check.
func (g *Registration) CheckID() string { return g.checkID }

// registration is the agent payload. first is the initial registration:
// its HTTP check starts critical, so that the instance is not passing before
// the agent has seen its readiness endpoint pass (the instance is usually
// registered while still starting). A registration sent again after the
// agent forgot it keeps the current status, so that a ready instance
// comes back within one heartbeat.
//
// A registration sent again while the agent still has the service (SetMeta,
// or a heartbeat sending a Meta change that SetMeta could not) replaces the
// service, Meta included, and keeps the status and output of its checks: an
// agent that receives a check ID it already has restores that check's
// status and output, whatever the payload says. The TTL check's timer
// starts again from the registration, as from a heartbeat.
func (g *Registration) registration(status, note string, meta map[string]string, first bool) *api.AgentServiceRegistration {
	ttl := &api.AgentServiceCheck{
		CheckID:                        g.checkID,
		Name:                           "activekit heartbeat",
		TTL:                            g.cfg.TTL.String(),
		Status:                         status,
		Notes:                          "passed by the instance every TTL/3",
		DeregisterCriticalServiceAfter: g.cfg.DeregisterCriticalAfter.String(),
	}
	if note != "" {
		ttl.Notes = note
	}
	checks := api.AgentServiceChecks{ttl}
	if g.cfg.HTTPCheck != "" {
		httpStatus := status
		if first {
			httpStatus = api.HealthCritical
		}
		checks = append(checks, &api.AgentServiceCheck{
			CheckID:                        "activekit:" + g.inst.ID + ":http",
			Name:                           "activekit readiness",
			HTTP:                           g.cfg.HTTPCheck,
			Method:                         http.MethodGet,
			Interval:                       g.cfg.HTTPCheckInterval.String(),
			Timeout:                        g.cfg.HTTPCheckTimeout.String(),
			Status:                         httpStatus,
			DeregisterCriticalServiceAfter: g.cfg.DeregisterCriticalAfter.String(),
		})
	}
	return &api.AgentServiceRegistration{
		ID:      g.inst.ID,
		Name:    g.inst.Service,
		Tags:    g.inst.Tags,
		Port:    g.inst.Port,
		Address: g.inst.Address,
		Meta:    meta,
		Checks:  checks,
	}
}

// register (re-)registers the service with the current status and Meta;
// first is the initial registration (see registration). The caller holds
// the right to write (lockIO), except for the first registration.
func (g *Registration) register(ctx context.Context, first bool) error {
	g.mu.Lock()
	status, note, meta, gen := g.status, g.note, g.inst.Meta, g.metaGen
	g.mu.Unlock()
	opts := api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)
	if err := g.client.Agent().ServiceRegisterOpts(g.registration(status, note, meta, first), opts); err != nil {
		return fmt.Errorf("consul: registering %s: %w", g.inst.ID, err)
	}
	g.mu.Lock()
	g.sentMeta = gen // writes are sent one at a time: gen is the latest sent
	g.mu.Unlock()
	return nil
}

// metaPending reports a Meta change that the agent has not accepted yet.
func (g *Registration) metaPending() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.sentMeta != g.metaGen
}

// withdrawTimeout bounds the deregistration that follows a first
// registration whose outcome is unknown.
const withdrawTimeout = 2 * time.Second

// outcomeUnknown reports whether a registration that failed with err may
// have been applied by the agent all the same: any failure but the agent's
// own refusal (a 4xx answer), such as a context that ended or a connection
// that failed once the request was sent.
func outcomeUnknown(err error) bool {
	var se api.StatusError
	return !errors.As(err, &se) || se.Code < 400 || se.Code > 499
}

// withdraw deregisters the service after a first registration that failed
// with cause but may have reached the agent, so that an instance the
// caller never got a Registration for does not linger there. It is bounded
// by withdrawTimeout, whatever ctx, which has usually ended.
func (g *Registration) withdraw(ctx context.Context, cause error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), withdrawTimeout)
	defer cancel()
	q := (&api.QueryOptions{}).WithContext(ctx)
	err := g.client.Agent().ServiceDeregisterOpts(g.inst.ID, q)
	switch {
	case err == nil:
		g.cfg.Logger.Info("consul: registration failed, perhaps after the agent applied it: deregistered",
			"instance", g.inst.ID, "error", cause)
	case forgotten(err): // the registration never landed
	default:
		g.cfg.Logger.Warn("consul: registration failed, perhaps after the agent applied it, and so did the deregistration: the agent removes it after DeregisterCriticalAfter",
			"instance", g.inst.ID, "error", cause, "deregister_error", err)
	}
}

// update sends the current status to the TTL check.
func (g *Registration) update(ctx context.Context) error {
	g.mu.Lock()
	status, note := g.status, g.note
	g.mu.Unlock()
	q := (&api.QueryOptions{}).WithContext(ctx)
	return g.client.Agent().UpdateTTLOpts(g.checkID, note, status, q)
}

// forgotten reports an error that means the agent no longer knows the
// check: a restarted agent, or an operator who deregistered the service.
func forgotten(err error) bool {
	var se api.StatusError
	if errors.As(err, &se) && se.Code == http.StatusNotFound {
		return true
	}
	s := err.Error()
	return strings.Contains(s, "does not have associated TTL") || strings.Contains(s, "Unknown check")
}

// lockIO takes the right to write to the agent, or returns ctx's error.
func (g *Registration) lockIO(ctx context.Context) error {
	select {
	case g.io <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *Registration) unlockIO() { <-g.io }

// jitter returns period less a random share of up to 10%.
func jitter(period time.Duration) time.Duration {
	if d := period / 10; d > 0 {
		return period - rand.N(d)
	}
	return period
}

// beat sends one heartbeat, bounded by timeout, and registers the service
// again if the agent has forgotten it, or if a Meta change has not reached
// the agent (a SetMeta that failed or gave up). Once sent, a beat is not cancelled
// by ctx (Close): an agent applies a request whose client gave up, so an
// abandoned re-registration could land after Close's deregistration and
// bring the stopped instance back. Close waits for it instead.
func (g *Registration) beat(ctx context.Context, timeout time.Duration) error {
	if err := g.lockIO(ctx); err != nil {
		return err
	}
	defer g.unlockIO()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	err := g.update(ctx)
	switch {
	case err != nil && forgotten(err):
		g.cfg.Logger.Warn("consul: agent lost the registration, registering again", "instance", g.inst.ID, "error", err)
		err = g.register(ctx, false)
	case err == nil && g.metaPending():
		g.cfg.Logger.Info("consul: sending the instance's changed meta", "instance", g.inst.ID)
		err = g.register(ctx, false)
	}
	return err
}

// heartbeat updates the TTL check every TTL/3 (with jitter) until Close,
// each update bounded to TTL/3, so that a hung agent connection cannot
// stall it. After a failed update it tries again sooner, with a jittered
// backoff from 200ms up to TTL/3, so that an agent that comes back sees the
// instance again within one TTL.
func (g *Registration) heartbeat(ctx context.Context, period time.Duration, bo *retry.Backoff) {
	defer close(g.stopped)
	wait := jitter(period)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		err := g.beat(ctx, period)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			wait = bo.NextBackOff()
			g.cfg.Logger.Warn("consul: heartbeat failed", "instance", g.inst.ID, "error", err, "retry_in", wait)
		default:
			bo.Reset()
			wait = jitter(period)
		}
		timer.Reset(wait)
	}
}

// SetCritical turns the instance's TTL check critical at once, with note as
// its output, so that every watch drops it while it finishes the requests it
// has: the first step of a graceful drain. The heartbeat keeps it critical
// from then on (and re-registers it critical if the agent forgets it), even
// when SetCritical itself fails. A heartbeat already in flight is waited
// for (within ctx) so that it cannot land afterwards. Once sent, its own
// write (and the registration it makes when the agent has forgotten the
// service) is not abandoned when ctx ends: it waits for the answer, at most
// TTL/3, so that nothing it sent lands after Close. After Close it returns
// discovery.ErrClosed.
func (g *Registration) SetCritical(ctx context.Context, note string) error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return discovery.ErrClosed
	}
	g.status, g.note = api.HealthCritical, note
	g.mu.Unlock()
	err := g.send(ctx, func(ctx context.Context) error {
		err := g.update(ctx)
		if err != nil && forgotten(err) {
			err = g.register(ctx, false)
		}
		return err
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, discovery.ErrClosed):
		return err // Close deregistered it meanwhile
	}
	return fmt.Errorf("consul: setting %s critical: %w", g.inst.ID, err)
}

// send makes one write to the agent, SetCritical's or SetMeta's, in turn
// with the others: it waits for the write in flight (within ctx), returns
// discovery.ErrClosed without sending once Close has begun, and runs write
// with a context bounded by TTL/3 and not by ctx. Once sent, a write is not
// abandoned when ctx ends: the agent applies it all the same, and a
// registration abandoned in flight could land after Close's deregistration
// (the heartbeat's beat does the same).
func (g *Registration) send(ctx context.Context, write func(context.Context) error) error {
	if err := g.lockIO(ctx); err != nil {
		return err
	}
	defer g.unlockIO()
	g.mu.Lock()
	closed := g.closed
	g.mu.Unlock()
	if closed {
		return discovery.ErrClosed
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.cfg.TTL/3)
	defer cancel()
	return write(wctx)
}

// SetMeta sets the instance's Meta key to value (an empty value removes
// the key) and registers the service again with the agent, so that the
// catalog, and every watch, shows it within the agent's sync: how an
// instance whose configuration changes at run time keeps MetaConfigHash
// true. Everything else is kept: ID, address, port, tags, and the checks
// with their current status and output (a drained instance stays critical,
// a passing one stays passing).
//
// The write is sent after any write in flight (a heartbeat, SetCritical),
// within ctx. Once sent, it is not abandoned when ctx ends, since an agent
// applies a request whose client gave up and it could land after Close's
// deregistration: SetMeta then waits for the answer, at most TTL/3. The
// new value is kept even when the write fails or ctx ends first, and the
// next heartbeat sends it (and every later re-registration includes it).
// Setting the value a key already has, once the agent has it, sends
// nothing.
//
// The key must be 1 to 128 letters, digits, '_' or '-', not starting with
// "consul-", and the value at most 512 bytes, as Consul requires; else it
// returns an error matching discovery.ErrInvalidInstance and changes
// nothing. After Close it returns an error matching discovery.ErrClosed and
// sends nothing.
func (g *Registration) SetMeta(ctx context.Context, key, value string) error {
	if err := validMeta(key, value); err != nil {
		return err
	}
	what := fmt.Sprintf("consul: setting meta %s of %s", key, g.inst.ID)
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return fmt.Errorf("%s: %w", what, discovery.ErrClosed)
	}
	old, had := g.inst.Meta[key]
	if old != value || had != (value != "") {
		meta := maps.Clone(g.inst.Meta)
		if meta == nil {
			meta = map[string]string{}
		}
		if value == "" {
			delete(meta, key)
		} else {
			meta[key] = value
		}
		if len(meta) > maxMetaPairs {
			g.mu.Unlock()
			return fmt.Errorf("%s: %w: more than %d meta pairs", what, discovery.ErrInvalidInstance, maxMetaPairs)
		}
		g.inst.Meta = meta
		g.metaGen++
	}
	g.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	err := g.send(ctx, func(ctx context.Context) error {
		if !g.metaPending() {
			return nil // already sent, by a heartbeat or another SetMeta
		}
		return g.register(ctx, false)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", what, err) // ErrClosed: Close deregistered it meanwhile
	}
	return nil
}

// Consul's limits on service Meta.
const (
	maxMetaPairs    = 64
	maxMetaKeyLen   = 128
	maxMetaValueLen = 512
)

// validMeta checks a Meta pair against Consul's rules, so that a bad pair
// is refused by SetMeta rather than by every later registration.
func validMeta(key, value string) error {
	bad := key == "" || len(key) > maxMetaKeyLen || strings.HasPrefix(key, "consul-") || len(value) > maxMetaValueLen
	for _, c := range key {
		bad = bad || !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-')
	}
	if bad {
		return fmt.Errorf("%w: meta %q=%q: a key is 1 to %d letters, digits, '_' or '-' not starting with \"consul-\", a value at most %d bytes",
			discovery.ErrInvalidInstance, key, value, maxMetaKeyLen, maxMetaValueLen)
	}
	return nil
}

// Drain implements discovery.Drainer with SetCritical.
func (g *Registration) Drain(ctx context.Context, reason string) error {
	return g.SetCritical(ctx, reason)
}

// Close stops the heartbeat, waits for it (a heartbeat in flight is
// finished, not abandoned, so that it cannot land after the deregistration:
// at most TTL/3) and for a SetCritical in flight, and deregisters the
// service. Calling it again returns nil. If ctx ends before the agent
// answers, the check lapses on its own within one TTL and the service is
// removed after DeregisterCriticalAfter; a heartbeat still in flight then
// ends on its own within TTL/3.
func (g *Registration) Close(ctx context.Context) error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	g.mu.Unlock()
	g.cancel()
	select {
	case <-g.stopped: // a beat in flight is finished, within TTL/3
	case <-ctx.Done():
		return fmt.Errorf("consul: deregistering %s: waiting for the heartbeat: %w", g.inst.ID, ctx.Err())
	}
	if err := g.lockIO(ctx); err != nil {
		return fmt.Errorf("consul: deregistering %s: %w", g.inst.ID, err)
	}
	defer g.unlockIO()
	q := (&api.QueryOptions{}).WithContext(ctx)
	err := g.client.Agent().ServiceDeregisterOpts(g.inst.ID, q)
	if err != nil && !forgotten(err) { // an agent that lost the service has nothing to remove
		return fmt.Errorf("consul: deregistering %s: %w", g.inst.ID, err)
	}
	return nil
}
