// Package memregistry is an in-process discovery registry: a Registry, a
// Resolver and Leaders in one value, with no network and no goroutine.
//
// It exists so that a fleet of instances in one process (package activetest,
// the embedded demo, a service's own tests) can register, find each other,
// route around a dead instance and elect a leader exactly as they would over
// Consul, and so that tests can inject the faults a real registry sees:
// an instance turning unhealthy (SetHealthy) and a leader losing its
// session (Revoke).
package memregistry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/activekit/activekit/discovery"
)

// Registry is an in-memory discovery.Registry and discovery.Resolver, and
// the home of in-memory Leaders. The zero value is not usable; call New. A
// Registry is safe for concurrent use and starts no goroutine.
type Registry struct {
	now func() time.Time

	mu      sync.Mutex
	entries map[string]*entry // by instance ID
	changed chan struct{}     // closed and replaced on every change
	leaders map[string]*election
}

type entry struct {
	inst    discovery.Instance
	healthy bool // SetHealthy
	drained bool // Drain
}

var (
	_ discovery.Registry     = (*Registry)(nil)
	_ discovery.Resolver     = (*Registry)(nil)
	_ discovery.Registration = (*Registration)(nil)
	_ discovery.Drainer      = (*Registration)(nil)
	_ discovery.Leader       = (*Leader)(nil)
)

// Config configures a Registry. The zero value means the defaults.
type Config struct {
	// Now stamps Update.Fetched; nil means time.Now.
	Now func() time.Time
}

// New returns an empty Registry.
func New(cfg Config) *Registry {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Registry{
		now:     cfg.Now,
		entries: make(map[string]*entry),
		changed: make(chan struct{}),
		leaders: make(map[string]*election),
	}
}

// ErrDuplicate is wrapped by the error Register returns for an instance
// whose ID is already registered and not closed.
var ErrDuplicate = errors.New("memregistry: instance ID already registered")

// notify wakes every watcher. r.mu must be held.
func (r *Registry) notify() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// Register adds inst, healthy. It fails for an invalid instance and for an
// ID that is already registered.
func (r *Registry) Register(ctx context.Context, inst discovery.Instance) (discovery.Registration, error) {
	if err := inst.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.entries[inst.ID]; ok {
		return nil, fmt.Errorf("%w: %s", ErrDuplicate, inst.ID)
	}
	e := &entry{inst: inst.Clone(), healthy: true}
	r.entries[inst.ID] = e
	r.notify()
	return &Registration{r: r, e: e}, nil
}

// SetHealthy marks the instance with id healthy or not, as a failing health
// check would; watchers see the change at once. It reports whether the
// instance is registered.
func (r *Registry) SetHealthy(id string, healthy bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[id]
	if ok && e.healthy != healthy {
		e.healthy = healthy
		r.notify()
	}
	return ok
}

// Instances returns the healthy instances of service, by ID.
func (r *Registry) Instances(service string) []discovery.Instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.healthyLocked(service)
}

func (r *Registry) healthyLocked(service string) []discovery.Instance {
	out := []discovery.Instance{}
	for _, e := range r.entries {
		if e.inst.Service == service && e.healthy && !e.drained {
			out = append(out, e.inst.Clone())
		}
	}
	slices.SortFunc(out, func(a, b discovery.Instance) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Watch implements discovery.Resolver: it calls fn with the healthy
// instances of service at once, and again after every change to them,
// until ctx ends.
func (r *Registry) Watch(ctx context.Context, service string, fn func(discovery.Update)) error {
	if err := discovery.ValidateServiceName(service); err != nil {
		return fmt.Errorf("memregistry: %w", err)
	}
	var last []discovery.Instance
	first := true
	for {
		r.mu.Lock()
		list := r.healthyLocked(service)
		changed := r.changed
		r.mu.Unlock()
		if first || !slices.EqualFunc(list, last, equal) {
			first = false
			last = list
			fn(discovery.Update{Service: service, Instances: cloneAll(list), Fetched: r.now()})
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

func cloneAll(list []discovery.Instance) []discovery.Instance {
	out := make([]discovery.Instance, len(list))
	for i := range list {
		out[i] = list[i].Clone()
	}
	return out
}

func equal(a, b discovery.Instance) bool {
	return a.ID == b.ID && a.Service == b.Service && a.Address == b.Address && a.Port == b.Port &&
		slices.Equal(a.Tags, b.Tags) && maps.Equal(a.Meta, b.Meta)
}

// Registration is an instance registered in a Registry. It has no heartbeat:
// it stays healthy until Drain, Close or Registry.SetHealthy.
type Registration struct {
	r *Registry
	e *entry
}

// Instance returns the registered instance.
func (g *Registration) Instance() discovery.Instance { return g.e.inst.Clone() }

// Drain takes the instance out of every watch, as a critical health check
// would, without deregistering it.
func (g *Registration) Drain(ctx context.Context, _ string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	g.r.mu.Lock()
	defer g.r.mu.Unlock()
	if g.r.entries[g.e.inst.ID] != g.e {
		return discovery.ErrClosed
	}
	if !g.e.drained {
		g.e.drained = true
		g.r.notify()
	}
	return nil
}

// Close deregisters the instance. It never fails; closing twice does
// nothing.
func (g *Registration) Close(context.Context) error {
	g.r.mu.Lock()
	defer g.r.mu.Unlock()
	if g.r.entries[g.e.inst.ID] == g.e {
		delete(g.r.entries, g.e.inst.ID)
		g.r.notify()
	}
	return nil
}

// election is the state of one leader key.
type election struct {
	token  uint64 // of the current or last term
	holder *term
}

type term struct {
	cancel context.CancelCauseFunc
	lost   bool
}

// Leader is an in-memory discovery.Leader: every Leader of one Registry
// and key competes for the same leadership.
type Leader struct {
	r   *Registry
	key string
}

// Leader returns a Leader for the election named key.
func (r *Registry) Leader(key string) *Leader { return &Leader{r: r, key: key} }

// Revoke ends the current term of the election key, as an expired Consul
// session would: the leader's context is cancelled with
// discovery.ErrLeadershipLost and another candidate may win. It reports
// whether there was a leader.
func (r *Registry) Revoke(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	el := r.leaders[key]
	if el == nil || el.holder == nil {
		return false
	}
	el.holder.lost = true
	el.holder.cancel(discovery.ErrLeadershipLost)
	el.holder = nil
	r.notify()
	return true
}

// Lead implements discovery.Leader. Tokens start at 1 and grow by one for
// each term.
func (l *Leader) Lead(ctx context.Context, fn func(ctx context.Context, token uint64) error) error {
	r := l.r
	for {
		r.mu.Lock()
		el := r.leaders[l.key]
		if el == nil {
			el = &election{}
			r.leaders[l.key] = el
		}
		if el.holder == nil {
			break // r.mu held
		}
		changed := r.changed
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
	el := r.leaders[l.key]
	if err := ctx.Err(); err != nil {
		r.mu.Unlock()
		return err
	}
	el.token++
	token := el.token
	lctx, cancel := context.WithCancelCause(ctx)
	t := &term{cancel: cancel}
	el.holder = t
	r.mu.Unlock()

	defer func() { // also when fn panics: the term must end
		r.mu.Lock()
		if el.holder == t {
			el.holder = nil
			r.notify()
		}
		r.mu.Unlock()
		cancel(nil)
	}()
	err := fn(lctx, token)
	r.mu.Lock()
	lost := t.lost
	r.mu.Unlock()
	if lost {
		return errors.Join(err, discovery.ErrLeadershipLost)
	}
	return err
}
