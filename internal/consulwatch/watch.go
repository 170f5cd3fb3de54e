package consulwatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/activekit/activekit/retry"
	"github.com/hashicorp/consul/api"
)

// Defaults used for the zero fields of a Config.
const (
	// DefaultWaitTime is how long one blocking query may wait on the
	// server. Consul adds up to WaitTime/16 of jitter and caps it at 10m.
	DefaultWaitTime = 5 * time.Minute
	// DefaultMinInterval is the least time between the starts of two
	// queries. It is small so that a change that arrives while the loop
	// is idle is delivered at once; it only bites when changes come
	// faster than it, or when the server answers at once without a
	// change, which is the spin it exists to prevent.
	DefaultMinInterval = 10 * time.Millisecond
	// MaxWaitTime is Consul's own cap on a blocking query's wait.
	MaxWaitTime = 10 * time.Minute
)

// DefaultBackoff is the policy used when Config.Backoff is the zero value:
// from 100ms, doubling, capped at 10s, with full jitter (the delay is never
// below MinInterval).
var defaultBackoff = retry.Policy{
	InitialInterval: 100 * time.Millisecond,
	Multiplier:      2,
	MaxInterval:     10 * time.Second,
	Jitter:          retry.FullJitter,
}

// ErrInvalidConfig is wrapped by the error Run returns for a Config it
// cannot use.
var ErrInvalidConfig = errors.New("consulwatch: invalid config")

// queryGrace is how long past Consul's own bound (WaitTime plus its
// jitter) one query may take before it is abandoned as failed. A variable
// for the tests.
var queryGrace = 5 * time.Second

// errNoMeta is reported when a Fetch returns no error and no QueryMeta.
var errNoMeta = errors.New("consulwatch: fetch returned no query meta")

// Fetch runs one query with q (WaitIndex, WaitTime and the context already
// set) and returns its result and Consul's QueryMeta. It is typically a
// one-line closure over a consul/api call:
//
//	func(ctx context.Context, q *api.QueryOptions) (api.KVPairs, *api.QueryMeta, error) {
//		return client.KV().List(prefix, q)
//	}
type Fetch[T any] func(ctx context.Context, q *api.QueryOptions) (T, *api.QueryMeta, error)

// Meta describes a delivered result.
type Meta struct {
	// LastIndex is the Consul index of the result (X-Consul-Index).
	LastIndex uint64
	// LastContact is when the result arrived, on the Config's clock.
	// Later queries that bring no change do not move it; use
	// Config.OnSuccess to follow contact without a change.
	LastContact time.Time
	// KnownLeader reports whether the answering server knew a leader.
	KnownLeader bool
	// Staleness is how old the result may already have been when it
	// arrived: how long the answering server had been out of contact with
	// the leader (X-Consul-LastContact, non-zero only for a stale read
	// answered by a follower), plus the age of an agent cache hit (Age,
	// with UseCache). Zero for a consistent or default read.
	Staleness time.Duration
}

// Config configures Run. The zero value means the defaults.
type Config struct {
	// WaitTime is the blocking wait of one query; DefaultWaitTime when
	// zero, at most MaxWaitTime.
	WaitTime time.Duration
	// MinInterval is the least time between the starts of two queries;
	// DefaultMinInterval when zero. It also floors every backoff delay.
	MinInterval time.Duration
	// Backoff is the delay policy after an error or an index of 0. The
	// zero value means 100ms doubling to 10s with full jitter. Its
	// MaxAttempts and MaxElapsedTime are ignored: a watch retries until
	// its context ends. A successful query with a non-zero index resets
	// the sequence.
	Backoff retry.Policy
	// Query is the template of every query (datacenter, token,
	// consistency mode, filter...). Its WaitIndex and WaitTime are
	// overwritten.
	Query api.QueryOptions
	// Clock is the time source for rate limiting and backoff; nil means
	// the system clock.
	Clock retry.Clock
	// Logger receives a warning for each failed query and debug lines for
	// index resets; nil means no logging.
	Logger *slog.Logger
	// OnError, when set, is called from Run's goroutine after each failed
	// query with the error and the delay before the next one, so that the
	// caller can report that its last result is getting old.
	OnError func(err error, retryIn time.Duration)
	// OnSuccess, when set, is called from Run's goroutine after each
	// successful query, changed or not, with its meta.
	OnSuccess func(Meta)
}

func (c Config) normalize() (Config, error) {
	switch {
	case c.WaitTime < 0:
		return c, fmt.Errorf("%w: negative wait time %v", ErrInvalidConfig, c.WaitTime)
	case c.WaitTime > MaxWaitTime:
		return c, fmt.Errorf("%w: wait time %v is above Consul's cap of %v", ErrInvalidConfig, c.WaitTime, MaxWaitTime)
	case c.MinInterval < 0:
		return c, fmt.Errorf("%w: negative minimum interval %v", ErrInvalidConfig, c.MinInterval)
	}
	if c.WaitTime == 0 {
		c.WaitTime = DefaultWaitTime
	}
	if c.MinInterval == 0 {
		c.MinInterval = DefaultMinInterval
	}
	if c.Backoff.InitialInterval == 0 && c.Backoff.MaxInterval == 0 && c.Backoff.Multiplier == 0 && c.Backoff.Jitter == 0 {
		c.Backoff = defaultBackoff
	}
	c.Backoff.MaxAttempts = -1
	c.Backoff.MaxElapsedTime = -1
	if err := c.Backoff.Validate(); err != nil {
		return c, fmt.Errorf("%w: backoff: %w", ErrInvalidConfig, err)
	}
	if c.Clock == nil {
		c.Clock = systemClock{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// Run queries with fetch until ctx ends, calling deliver with each new
// result and its meta (see the package doc for which results are new).
// deliver is called from Run's goroutine, in index order, never
// concurrently; the next query starts only when it returns, so a slow
// deliver delays the watch rather than queueing results.
//
// Run returns ctx's error once ctx ends, or an error wrapping
// ErrInvalidConfig at once for a Config it cannot use. Errors from fetch
// never end the loop.
func Run[T any](ctx context.Context, cfg Config, fetch Fetch[T], deliver func(T, Meta)) error {
	c, err := cfg.normalize()
	if err != nil {
		return err
	}
	if fetch == nil || deliver == nil {
		return fmt.Errorf("%w: nil fetch or deliver", ErrInvalidConfig)
	}
	bo, err := retry.NewBackoff(c.Backoff, c.Clock)
	if err != nil {
		return fmt.Errorf("%w: backoff: %w", ErrInvalidConfig, err)
	}
	var (
		waitIndex uint64    // WaitIndex of the next query; 0 means non-blocking
		lastIndex uint64    // index of the last delivered result
		delivered bool      // whether anything was delivered yet
		lastStart time.Time // start of the previous query
	)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !lastStart.IsZero() {
			if d := lastStart.Add(c.MinInterval).Sub(c.Clock.Now()); d > 0 {
				if err := sleep(ctx, c.Clock, d); err != nil {
					return err
				}
			}
		}
		lastStart = c.Clock.Now()

		q := c.Query
		q.WaitIndex = waitIndex
		q.WaitTime = c.WaitTime
		// Consul answers a blocking query within WaitTime plus WaitTime/16
		// of jitter. A wedged agent keeps the connection open and never
		// answers: the query is bounded, so the watch reports the error and
		// tries again instead of keeping its last result silently forever.
		qctx, qcancel := context.WithTimeout(ctx, c.WaitTime+c.WaitTime/16+queryGrace)
		v, qm, err := fetch(qctx, q.WithContext(qctx))
		qcancel()
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if err == nil && qm == nil {
			err = errNoMeta
		}
		if err != nil {
			waitIndex = 0 // resynchronise: the server may have restarted with a lower index
			d := max(bo.NextBackOff(), c.MinInterval)
			c.Logger.LogAttrs(ctx, slog.LevelWarn, "consul query failed",
				slog.Any("error", err), slog.Duration("retry_in", d), slog.Uint64("last_index", lastIndex))
			if c.OnError != nil {
				c.OnError(err, d)
			}
			if err := sleep(ctx, c.Clock, d); err != nil {
				return err
			}
			continue
		}

		idx := qm.LastIndex
		meta := Meta{LastIndex: idx, LastContact: c.Clock.Now(), KnownLeader: qm.KnownLeader, Staleness: max(qm.LastContact, 0) + max(qm.CacheAge, 0)}
		changed := !delivered || idx != lastIndex
		backwards := delivered && idx < lastIndex
		switch {
		case idx == 0:
			waitIndex = 1
		case backwards:
			waitIndex = 0
			c.Logger.LogAttrs(ctx, slog.LevelDebug, "consul index went backwards, resetting",
				slog.Uint64("index", idx), slog.Uint64("previous", lastIndex))
		default:
			waitIndex = idx
		}
		if c.OnSuccess != nil {
			c.OnSuccess(meta)
		}
		if changed {
			delivered = true
			lastIndex = idx
			deliver(v, meta)
		}
		if idx == 0 {
			d := max(bo.NextBackOff(), c.MinInterval)
			c.Logger.LogAttrs(ctx, slog.LevelDebug, "consul returned index 0, backing off", slog.Duration("retry_in", d))
			if err := sleep(ctx, c.Clock, d); err != nil {
				return err
			}
			continue
		}
		bo.Reset()
	}
}

// sleep waits d on clock, or returns ctx's error if ctx ends first.
func sleep(ctx context.Context, clock retry.Clock, d time.Duration) error {
	t := clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C():
		return nil
	}
}

type systemClock struct{}

func (systemClock) Now() time.Time                       { return time.Now() }
func (systemClock) NewTimer(d time.Duration) retry.Timer { return systemTimer{time.NewTimer(d)} }

type systemTimer struct{ t *time.Timer }

func (t systemTimer) C() <-chan time.Time { return t.t.C }
func (t systemTimer) Stop() bool          { return t.t.Stop() }
