package consul

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/internal/consulwatch"
	"github.com/activekit/activekit/retry"
	"github.com/hashicorp/consul/api"
)

// ResolverConfig configures a Resolver. The zero value means the defaults.
type ResolverConfig struct {
	// Tag, when set, keeps only the instances that carry it (the tag
	// parameter of the health endpoint).
	Tag string
	// Filter, when set, is a Consul filter expression applied by the
	// server, such as `Service.Meta.version == "1.4.2"` or
	// `"canary" not in Service.Tags`.
	Filter string
	// Query is the template of every query: datacenter, token,
	// consistency mode (AllowStale, UseCache...). Its WaitIndex,
	// WaitTime and Filter are set by the watch.
	Query api.QueryOptions
	// WaitTime is the blocking wait of one query; 5 minutes when zero.
	// A query still unanswered 5s after WaitTime plus Consul's jitter
	// (WaitTime/16) is abandoned as failed.
	WaitTime time.Duration
	// MinInterval is the least time between two queries; 10ms when zero.
	MinInterval time.Duration
	// Backoff is the delay policy after a failed query; 100ms doubling to
	// 10s with full jitter when zero.
	Backoff retry.Policy
	// Clock is the time source of the watch (rate limit, backoff, ages);
	// nil means the system clock.
	Clock retry.Clock
	// Logger receives failed queries; nil means no logging.
	Logger *slog.Logger
}

// Resolver follows the passing instances of services through blocking
// queries on the health endpoint. It is safe for concurrent use; it holds no
// goroutine or connection of its own.
type Resolver struct {
	client *api.Client
	cfg    ResolverConfig
	now    func() time.Time
}

var _ discovery.Resolver = (*Resolver)(nil)

// NewResolver returns a Resolver that queries through client.
func NewResolver(client *api.Client, cfg ResolverConfig) (*Resolver, error) {
	if client == nil {
		return nil, fmt.Errorf("%w: nil Consul client", discovery.ErrInvalidConfig)
	}
	r := &Resolver{client: client, cfg: cfg, now: time.Now}
	if cfg.Clock != nil {
		r.now = cfg.Clock.Now
	}
	if _, err := r.watchConfig(func(error, time.Duration) {}); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Resolver) watchConfig(onError func(error, time.Duration)) (consulwatch.Config, error) {
	q := r.cfg.Query
	q.Filter = r.cfg.Filter
	c := consulwatch.Config{
		WaitTime:    r.cfg.WaitTime,
		MinInterval: r.cfg.MinInterval,
		Backoff:     r.cfg.Backoff,
		Query:       q,
		Clock:       r.cfg.Clock,
		Logger:      r.cfg.Logger,
		OnError:     onError,
	}
	// consulwatch has no Validate: run it on a done context, which checks
	// the config and then returns at once without a query.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := consulwatch.Run(ctx, c, func(context.Context, *api.QueryOptions) (int, *api.QueryMeta, error) {
		return 0, nil, nil
	}, func(int, consulwatch.Meta) {})
	if errors.Is(err, consulwatch.ErrInvalidConfig) {
		return c, fmt.Errorf("%w: %w", discovery.ErrInvalidConfig, err)
	}
	return c, nil
}

// Watch implements discovery.Resolver over Consul's health endpoint, asking
// for passing instances only.
//
// The first result is delivered even when empty. Later results are
// delivered when the list of instances changed (a query that returns with a
// new index but the same instances delivers nothing). When a query fails,
// fn receives the last delivered list again with Update.Err set and
// Update.Fetched the time of the last successful query, so the caller
// knows the list's age; if no query has succeeded yet, the list is empty.
// Update.Fetched of a stale read (Query.AllowStale) is dated back by how
// long the answering server had been out of contact with the leader, and
// that of an agent cache hit (Query.UseCache) by its age, so that a list
// from a partitioned follower looks as old as it may be.
// The first successful query after failures delivers with Err cleared, even
// when nothing changed.
func (r *Resolver) Watch(ctx context.Context, service string, fn func(discovery.Update)) error {
	if err := discovery.ValidateServiceName(service); err != nil {
		return fmt.Errorf("consul: %w", err)
	}
	var (
		last      []discovery.Instance
		delivered bool
		fetched   time.Time
		stale     bool
	)
	send := func(err error) {
		fn(discovery.Update{Service: service, Instances: cloneAll(last), Fetched: fetched, Err: err})
	}
	cfg, err := r.watchConfig(func(err error, _ time.Duration) {
		stale = true
		send(fmt.Errorf("consul: watching %s: %w", service, err))
	})
	if err != nil {
		return err
	}
	var lastIndex uint64
	cfg.OnSuccess = func(m consulwatch.Meta) {
		// A stale read (AllowStale) or a cached one (UseCache) may be
		// older than its arrival: date the list from when the answering
		// server last heard from the leader.
		fetched = m.LastContact.Add(-m.Staleness)
		if stale && delivered && m.LastIndex == lastIndex {
			// Recovered without a change: deliver to clear the error.
			stale = false
			send(nil)
		}
	}
	// consulwatch bounds each query (a wedged agent that never answers
	// fails it), and passes the bounded context in q.
	fetch := func(_ context.Context, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
		return r.client.Health().Service(service, r.cfg.Tag, true, q)
	}
	return consulwatch.Run(ctx, cfg, fetch, func(entries []*api.ServiceEntry, m consulwatch.Meta) {
		lastIndex = m.LastIndex
		list := toInstances(entries)
		if delivered && !stale && slices.EqualFunc(list, last, equal) {
			return
		}
		delivered, stale, last = true, false, list
		send(nil)
	})
}

func toInstances(entries []*api.ServiceEntry) []discovery.Instance {
	out := make([]discovery.Instance, 0, len(entries))
	for _, e := range entries {
		if e == nil || e.Service == nil {
			continue
		}
		s := e.Service
		addr := s.Address
		if addr == "" && e.Node != nil {
			addr = e.Node.Address
		}
		out = append(out, discovery.Instance{
			ID:      s.ID,
			Service: s.Service,
			Address: addr,
			Port:    s.Port,
			Tags:    slices.Clone(s.Tags),
			Meta:    maps.Clone(s.Meta),
		})
	}
	slices.SortFunc(out, func(a, b discovery.Instance) int { return cmp.Compare(a.ID, b.ID) })
	return out
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
