package consulsource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/activekit/activekit/config"
	"github.com/activekit/activekit/internal/consulwatch"
	"github.com/activekit/activekit/retry"
	"github.com/hashicorp/consul/api"
)

// ErrNotFound is reported when the key (or every key under the prefix) is
// missing and the source is not Optional: deleting the configuration by
// mistake must not reset the fleet to its defaults.
var ErrNotFound = errors.New("consulsource: no configuration in Consul")

// Option configures a Source.
type Option interface{ apply(*Source) }

type optionFunc func(*Source)

func (f optionFunc) apply(s *Source) { f(s) }

// Optional makes a missing key or an empty prefix an empty layer rather
// than an error.
func Optional() Option { return optionFunc(func(s *Source) { s.optional = true }) }

// WithQueryOptions sets the template of every query (datacenter, token,
// consistency mode).
func WithQueryOptions(q api.QueryOptions) Option {
	return optionFunc(func(s *Source) { s.watch.Query = q })
}

// WithWaitTime sets the blocking wait of each query (default 5m, at most
// 10m; a value outside that range makes every Load fail with
// ErrInvalidOption).
func WithWaitTime(d time.Duration) Option {
	return optionFunc(func(s *Source) { s.watch.WaitTime = d })
}

// WithBackoff sets the delays after a failed query (default 100ms doubling
// to 10s, with full jitter). Its MaxAttempts and MaxElapsedTime are
// ignored: the watch retries until its context ends. A policy that
// retry.Policy.Validate refuses makes every Load fail with
// ErrInvalidOption.
func WithBackoff(p retry.Policy) Option {
	return optionFunc(func(s *Source) { s.watch.Backoff = p })
}

// WithLogger sets the logger of the watch (default none).
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(s *Source) { s.watch.Logger = l })
}

// Source is a config.Source and config.Watcher over Consul KV.
type Source struct {
	client   *api.Client
	key      string
	format   config.Format // for a Key
	prefix   bool          // a Prefix, not a Key
	optional bool
	watch    consulwatch.Config
	err      error // options the watch cannot use: every Load and Watch fails with it
}

var _ config.Watcher = (*Source)(nil)

// Key returns a source reading the document at key, in format. A format
// config.Parse does not know (such as "", which config.FormatOf returns
// for an unknown extension) makes every read fail.
func Key(client *api.Client, key string, format config.Format, opts ...Option) *Source {
	s := &Source{client: client, key: key, format: format}
	s.init(opts)
	return s
}

// Prefix returns a source reading every key under prefix: the key
// prefix/db/max_conns with the value 10 sets db.max_conns to "10", which
// the decoder converts to the field's type. Folders (keys ending in /) are
// skipped.
func Prefix(client *api.Client, prefix string, opts ...Option) *Source {
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	s := &Source{client: client, key: prefix, prefix: true}
	s.init(opts)
	return s
}

// ErrInvalidOption is wrapped by the error of every Load and Watch of a
// Source made with an option it cannot use, so that config.New fails at
// boot rather than the watch at run time.
var ErrInvalidOption = errors.New("consulsource: invalid option")

func (s *Source) init(opts []Option) {
	for _, o := range opts {
		o.apply(s)
	}
	w := s.watch
	if w.WaitTime < 0 || w.WaitTime > consulwatch.MaxWaitTime {
		s.err = fmt.Errorf("%w: wait time %v is outside [0, %v]", ErrInvalidOption, w.WaitTime, consulwatch.MaxWaitTime)
		return
	}
	b := w.Backoff
	b.MaxAttempts, b.MaxElapsedTime = -1, -1 // the watch ignores them
	if err := b.Validate(); err != nil {
		s.err = fmt.Errorf("%w: backoff: %w", ErrInvalidOption, err)
	}
}

// Name returns "consul:" and the key or prefix.
func (s *Source) Name() string { return "consul:" + s.key }

// Load reads the layer once, without blocking.
func (s *Source) Load(ctx context.Context) (map[string]any, error) {
	if s.err != nil {
		return nil, s.err
	}
	q := s.watch.Query
	q.WaitIndex, q.WaitTime = 0, 0
	if !s.prefix {
		p, _, err := s.client.KV().Get(s.key, q.WithContext(ctx))
		if err != nil {
			return nil, err
		}
		return s.parseKey(p)
	}
	ps, _, err := s.client.KV().List(s.key, q.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	return s.parsePrefix(ps)
}

// Watch follows the key or prefix with blocking queries until ctx ends.
// While Consul cannot be reached it reports each failed query to update
// and retries with backoff; the first query that succeeds again clears the
// error, even when nothing changed meanwhile. A restored Consul snapshot
// (an index that goes backwards) is followed as soon as Consul wakes the
// watch's query; a query sent after the restore with the older, higher
// index waits out its wait time first (WithWaitTime bounds that).
func (s *Source) Watch(ctx context.Context, update func(map[string]any, error)) error {
	if s.err != nil {
		return s.err
	}
	var (
		last    map[string]any
		lastErr error
		failing bool
	)
	send := func(m map[string]any, err error) {
		last, lastErr = m, err
		update(m, err)
	}
	cfg := s.watch
	cfg.OnError = func(err error, _ time.Duration) {
		failing = true
		update(nil, err)
	}
	cfg.OnSuccess = func(consulwatch.Meta) {
		if failing && (last != nil || lastErr != nil) {
			update(last, lastErr)
		}
		failing = false
	}
	if !s.prefix {
		return consulwatch.Run(ctx, cfg,
			resyncEarly(func(q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error) {
				return s.client.KV().Get(s.key, q)
			}),
			func(p *api.KVPair, _ consulwatch.Meta) { send(s.parseKey(p)) })
	}
	return consulwatch.Run(ctx, cfg,
		resyncEarly(func(q *api.QueryOptions) (api.KVPairs, *api.QueryMeta, error) {
			return s.client.KV().List(s.key, q)
		}),
		func(ps api.KVPairs, _ consulwatch.Meta) { send(s.parsePrefix(ps)) })
}

// resyncEarly wraps a watch's query: when a blocking query comes back
// before its wait time with its index unchanged, Consul has woken it
// without a change of its own, as it wakes every blocking query when a
// snapshot is restored (and it may answer that wakeup from the state
// before the restore). The restored state can have a lower index than the
// one the watch waits on, and Consul blocks a query until the index passes
// its WaitIndex, so the watch would see the restore only when its wait
// time ends (5 minutes by default), running meanwhile a configuration
// Consul no longer holds. So such a query is followed at once by a
// non-blocking one, whose result is returned instead: an index that went
// backwards then resets the watch, as Consul's rules ask.
func resyncEarly[T any](query func(*api.QueryOptions) (T, *api.QueryMeta, error)) consulwatch.Fetch[T] {
	return func(_ context.Context, q *api.QueryOptions) (T, *api.QueryMeta, error) {
		start := time.Now()
		v, m, err := query(q)
		if err != nil || m == nil || q.WaitIndex == 0 || m.LastIndex != q.WaitIndex || time.Since(start) >= q.WaitTime {
			return v, m, err
		}
		nq := *q // keeps the context
		nq.WaitIndex, nq.WaitTime = 0, 0
		return query(&nq)
	}
}

func (s *Source) parseKey(p *api.KVPair) (map[string]any, error) {
	switch s.format {
	case config.YAML, config.JSON, config.TOML:
	default: // whether or not the key holds anything: a missing key is no excuse
		return nil, fmt.Errorf("%w: key %s: unknown format %q", config.ErrSource, s.key, s.format)
	}
	if p == nil {
		if s.optional {
			return map[string]any{}, nil
		}
		return nil, fmt.Errorf("%w: key %s is missing", ErrNotFound, s.key)
	}
	m, err := config.Parse(s.format, p.Value)
	if err != nil {
		return nil, fmt.Errorf("%s (modify index %d): %w", s.key, p.ModifyIndex, err)
	}
	return m, nil
}

func (s *Source) parsePrefix(ps api.KVPairs) (map[string]any, error) {
	root := map[string]any{}
	n := 0
	for _, p := range ps {
		rel := strings.TrimPrefix(p.Key, s.key)
		if rel == "" || strings.HasSuffix(rel, "/") {
			continue
		}
		parts := strings.Split(rel, "/")
		m := root
		for _, part := range parts[:len(parts)-1] {
			switch child := m[part].(type) {
			case map[string]any:
				m = child
			case nil:
				c := map[string]any{}
				m[part] = c
				m = c
			default:
				return nil, fmt.Errorf("%w: %s is both a value and a folder", config.ErrSource, p.Key)
			}
		}
		leaf := parts[len(parts)-1]
		if _, ok := m[leaf].(map[string]any); ok {
			return nil, fmt.Errorf("%w: %s is both a value and a folder", config.ErrSource, p.Key)
		}
		m[leaf] = string(p.Value)
		n++
	}
	if n == 0 && !s.optional {
		return nil, fmt.Errorf("%w: no key under %s", ErrNotFound, s.key)
	}
	return root, nil
}
