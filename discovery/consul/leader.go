package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/activekit/activekit/discovery"
	"github.com/hashicorp/consul/api"
)

// Defaults used for the zero fields of a LeaderConfig.
const (
	DefaultSessionTTL   = 15 * time.Second
	DefaultLockWaitTime = 5 * time.Second
)

// LeaderConfig configures a Leader. The zero value means the defaults.
type LeaderConfig struct {
	// Value is stored in the lock key while held (the holder's instance
	// ID is a good choice, for operators).
	Value []byte
	// SessionName names the session in Consul; "activekit leader" when
	// empty.
	SessionName string
	// SessionTTL is the TTL of the lock's session, renewed every TTL/2
	// (DefaultSessionTTL when zero; Consul accepts 10s to 24h). A leader
	// that cannot renew for a TTL gives leadership up, and Consul may take
	// up to twice the TTL to invalidate the session of a dead leader.
	SessionTTL time.Duration
	// LockDelay is how long Consul refuses the lock after a session
	// holding it is invalidated, giving the old leader time to notice and
	// stop. Zero means Consul's default, 15s; the smallest delay is 1ms.
	// A candidate refused by the lock delay tries again only after
	// api.DefaultLockRetryTime (5s, as api.Lock does), so a handover
	// takes between LockDelay and LockDelay+5s.
	LockDelay time.Duration
	// LockWaitTime is how long one blocking query waits for the lock to
	// be free (DefaultLockWaitTime when zero). Lead returns as soon as
	// ctx ends while it waits for the lock, whatever the agent does.
	LockWaitTime time.Duration
	// MonitorRetries is how many failed queries in a row the lock's
	// monitor rides out (each after MonitorRetryTime, 2s when zero)
	// before declaring leadership lost. Zero, the default, declares it
	// lost at the first failure: the safe choice, since a leader that
	// cannot reach Consul cannot know that it still leads.
	MonitorRetries   int
	MonitorRetryTime time.Duration
	// Logger receives session renewal failures; nil means no logging.
	Logger *slog.Logger
}

func (c LeaderConfig) normalize() (LeaderConfig, error) {
	switch {
	case c.SessionTTL != 0 && (c.SessionTTL < 10*time.Second || c.SessionTTL > 24*time.Hour):
		return c, fmt.Errorf("%w: session TTL %v is outside Consul's 10s to 24h", discovery.ErrInvalidConfig, c.SessionTTL)
	case c.LockDelay < 0 || c.LockWaitTime < 0 || c.MonitorRetries < 0 || c.MonitorRetryTime < 0:
		return c, fmt.Errorf("%w: negative lock delay, wait time or monitor retries", discovery.ErrInvalidConfig)
	}
	if c.SessionName == "" {
		c.SessionName = "activekit leader"
	}
	if c.SessionTTL == 0 {
		c.SessionTTL = DefaultSessionTTL
	}
	if c.LockWaitTime == 0 {
		c.LockWaitTime = DefaultLockWaitTime
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// Leader elects one holder of a Consul lock key among all the Leaders of
// that key, in any process.
type Leader struct {
	client *api.Client
	key    string
	cfg    LeaderConfig
}

var _ discovery.Leader = (*Leader)(nil)

// NewLeader returns a Leader for the KV key.
func NewLeader(client *api.Client, key string, cfg LeaderConfig) (*Leader, error) {
	if client == nil {
		return nil, fmt.Errorf("%w: nil Consul client", discovery.ErrInvalidConfig)
	}
	if key == "" {
		return nil, fmt.Errorf("%w: empty lock key", discovery.ErrInvalidConfig)
	}
	c, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	return &Leader{client: client, key: key, cfg: c}, nil
}

// Lead implements discovery.Leader with a Consul lock, as api.Lock takes
// one (same key flags, so the two interoperate), with every query bound to
// ctx.
//
// Each call creates a session (behavior "release", SessionTTL, LockDelay),
// renews it from a goroutine of its own, and waits for the lock. Once held, the token is the ModifyIndex of the lock key as
// written by the acquisition, read back consistently: Consul's index only
// grows, so every later acquisition has a larger one. It grows as long as
// the cluster keeps its state: a cluster rebuilt empty (or a dev agent
// restarted) counts again from a low index, so the systems that fence on
// the token must then forget the tokens they saw. fn's context is
// cancelled with discovery.ErrLeadershipLost when the lock's monitor sees
// the key taken from this session (the session was invalidated or
// destroyed, or the key deleted) or when the session cannot be renewed.
// When fn returns, Lead releases the lock, destroys the session (each
// bounded to a few seconds) and waits for its helper goroutines, the
// monitor's query included, to end.
func (l *Leader) Lead(ctx context.Context, fn func(ctx context.Context, token uint64) error) error {
	wctx := (&api.WriteOptions{}).WithContext(ctx)
	created := time.Now() // no later than the server's start of the session TTL
	sid, _, err := l.client.Session().Create(&api.SessionEntry{
		Name:      l.cfg.SessionName,
		TTL:       l.cfg.SessionTTL.String(),
		LockDelay: l.cfg.LockDelay,
		Behavior:  api.SessionBehaviorRelease,
	}, wctx)
	if err != nil {
		return fmt.Errorf("consul: creating a session for %s: %w", l.key, err)
	}

	lctx, cancel := context.WithCancelCause(ctx)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		lost bool
	)
	loseLeadership := func() {
		mu.Lock()
		lost = true
		mu.Unlock()
		cancel(discovery.ErrLeadershipLost)
	}
	wg.Go(func() { l.renew(lctx, sid, created, loseLeadership) })

	sent := false // an acquisition was sent: release it
	defer func() {
		// Release and destroy first: both change the key, which ends
		// the monitor's query; then stop our goroutines and wait for all.
		l.release(ctx, sid, sent)
		cancel(nil)
		wg.Wait()
	}()
	held, err := l.acquire(lctx, sid, &sent)
	switch {
	case err != nil:
		return fmt.Errorf("consul: acquiring %s: %w", l.key, err)
	case !held && ctx.Err() != nil:
		return ctx.Err()
	case !held:
		return discovery.ErrLeadershipLost // the session expired while waiting
	}
	wg.Go(func() { l.monitor(lctx, sid, loseLeadership) })

	pair, _, err := l.client.KV().Get(l.key, (&api.QueryOptions{RequireConsistent: true}).WithContext(lctx))
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case lctx.Err() != nil:
		return discovery.ErrLeadershipLost
	case err != nil:
		return fmt.Errorf("consul: reading %s after acquiring it: %w", l.key, err)
	case pair == nil || pair.Session != sid:
		return discovery.ErrLeadershipLost
	}

	ferr := fn(lctx, pair.ModifyIndex)
	mu.Lock()
	wasLost := lost
	mu.Unlock()
	if wasLost {
		return errors.Join(ferr, discovery.ErrLeadershipLost)
	}
	return ferr
}

// monitorWaitTime is the blocking wait of the monitor's queries.
const monitorWaitTime = 5 * time.Minute

// queryBound is how long a blocking query waiting wait may take before it
// is abandoned as failed: Consul answers within wait plus wait/16 of
// jitter; an agent that accepted it and never answers must not hold it
// forever.
func queryBound(wait time.Duration) time.Duration { return wait + wait/16 + 5*time.Second }

// acquire waits until sid holds the lock key, as api.Lock.Lock does, but
// with every query bound to ctx (and bounded), so that it returns as soon
// as ctx ends, whatever the agent does: (false, nil) then. It sets *sent
// once it has sent an acquisition. A key that holds something else than a
// lock is api.ErrLockConflict. A candidate refused by the lock delay tries
// again after api.DefaultLockRetryTime.
func (l *Leader) acquire(ctx context.Context, sid string, sent *bool) (bool, error) {
	kv := l.client.KV()
	get := func(index uint64) (*api.KVPair, *api.QueryMeta, error) {
		qctx, cancel := context.WithTimeout(ctx, queryBound(l.cfg.LockWaitTime))
		defer cancel()
		return kv.Get(l.key, (&api.QueryOptions{WaitIndex: index, WaitTime: l.cfg.LockWaitTime}).WithContext(qctx))
	}
	var index uint64
	for {
		if ctx.Err() != nil {
			return false, nil
		}
		pair, meta, err := get(index)
		switch {
		case ctx.Err() != nil:
			return false, nil
		case err != nil:
			return false, fmt.Errorf("reading the lock: %w", err)
		case pair != nil && pair.Flags != api.LockFlagValue:
			return false, api.ErrLockConflict
		case pair != nil && pair.Session == sid:
			return true, nil
		case pair != nil && pair.Session != "":
			index = meta.LastIndex
			continue
		}
		*sent = true
		wctx, cancel := context.WithTimeout(ctx, l.cfg.LockWaitTime+5*time.Second)
		ok, _, err := kv.Acquire(&api.KVPair{Key: l.key, Value: l.cfg.Value, Session: sid, Flags: api.LockFlagValue}, (&api.WriteOptions{}).WithContext(wctx))
		cancel()
		switch {
		case ctx.Err() != nil:
			return false, nil
		case err != nil:
			return false, fmt.Errorf("acquiring the lock: %w", err)
		case ok:
			return true, nil
		}
		// Refused: taken by another first, or a lock delay is in effect.
		pair, meta, err = get(0)
		switch {
		case ctx.Err() != nil:
			return false, nil
		case err != nil:
			return false, fmt.Errorf("reading the lock: %w", err)
		case pair != nil && pair.Session != "":
			index = meta.LastIndex
			continue
		}
		t := time.NewTimer(api.DefaultLockRetryTime)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, nil
		case <-t.C:
		}
		index = 0
	}
}

// monitor follows the lock key until ctx ends, and calls lost once the key
// is no longer held by sid (the session was invalidated or destroyed, the
// key deleted) or the key cannot be read: at the first failure, or after
// MonitorRetries retryable ones in a row, each MonitorRetryTime apart
// (api.DefaultMonitorRetryTime when zero). Its queries are bound to ctx, so
// it returns as soon as Lead ends, whatever the agent does.
func (l *Leader) monitor(ctx context.Context, sid string, lost func()) {
	kv := l.client.KV()
	retryTime := l.cfg.MonitorRetryTime
	if retryTime == 0 {
		retryTime = api.DefaultMonitorRetryTime
	}
	var index uint64
	retries := l.cfg.MonitorRetries
	for {
		qctx, cancel := context.WithTimeout(ctx, queryBound(monitorWaitTime))
		pair, meta, err := kv.Get(l.key, (&api.QueryOptions{RequireConsistent: true, WaitIndex: index, WaitTime: monitorWaitTime}).WithContext(qctx))
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil && retries > 0 && api.IsRetryableError(err):
			retries--
			index = 0
			t := time.NewTimer(retryTime)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		case err != nil:
			l.cfg.Logger.Warn("consul: leader lock unreadable, giving up", "key", l.key, "error", err)
			lost()
			return
		case pair != nil && pair.Session == sid:
			index = meta.LastIndex
			retries = l.cfg.MonitorRetries
		default:
			lost()
			return
		}
	}
}

// renew renews the session every TTL/2 until ctx ends, and calls lost when
// the session is gone or could not be renewed for a whole TTL. Each renewal
// is bounded by that TTL: an agent that stops answering must not keep a
// leader that can no longer know it leads from finding out.
//
// last, and each later renewal, is timed from before the request was sent,
// so that this end never believes the session younger than the server does.
func (l *Leader) renew(ctx context.Context, sid string, last time.Time, lost func()) {
	ttl := l.cfg.SessionTTL
	wait := ttl / 2
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sent := time.Now()
		rctx, rcancel := context.WithDeadline(ctx, last.Add(ttl))
		entry, _, err := l.client.Session().Renew(sid, (&api.WriteOptions{}).WithContext(rctx))
		rcancel()
		switch {
		case ctx.Err() != nil:
			return
		case err == nil && entry == nil:
			l.cfg.Logger.Warn("consul: leader session expired", "key", l.key)
			lost()
			return
		case err != nil:
			if time.Since(last) >= ttl {
				l.cfg.Logger.Warn("consul: leader session not renewed for a TTL, giving up", "key", l.key, "error", err)
				lost()
				return
			}
			wait = max(min(time.Second, ttl/4, time.Until(last.Add(ttl))), 0)
		default:
			last = sent
			wait = ttl / 2
		}
		t.Reset(wait)
	}
}

// release releases the lock when held, as api.Lock.Unlock does (no lock
// delay applies to an explicit release), and destroys the session, which
// would release it too, after the lock delay. Both use a context that
// outlives ctx's cancellation, bounded to a few seconds.
func (l *Leader) release(ctx context.Context, sid string, held bool) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	w := (&api.WriteOptions{}).WithContext(dctx)
	if held {
		pair := &api.KVPair{Key: l.key, Value: l.cfg.Value, Session: sid, Flags: api.LockFlagValue}
		if _, _, err := l.client.KV().Release(pair, w); err != nil {
			l.cfg.Logger.Warn("consul: releasing leader lock", "key", l.key, "error", err)
		}
	}
	if _, err := l.client.Session().Destroy(sid, w); err != nil {
		l.cfg.Logger.Warn("consul: destroying leader session", "key", l.key, "error", err)
	}
}
