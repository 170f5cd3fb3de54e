package dedupe

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/retry"
)

// Status is the outcome of a claim.
type Status int

const (
	// Claimed: the caller holds the event until its lease ends, and must
	// call Done after the effect or Release after a failure.
	Claimed Status = iota + 1
	// Done: the event's effect was recorded; skip it.
	Done
	// Busy: another claimer holds a live lease; try again after
	// Claim.Remaining.
	Busy
)

func (s Status) String() string {
	switch s {
	case Claimed:
		return "claimed"
	case Done:
		return "done"
	case Busy:
		return "busy"
	}
	return "Status(" + fmt.Sprint(int(s)) + ")"
}

// Claim is the result of Store.Claim.
type Claim struct {
	Group  string
	ID     string
	Status Status
	// Token identifies this claim; Done and Release act only while the
	// store still holds it, so a claimer whose lease ran out cannot
	// finish or drop its successor's claim.
	Token string
	// Remaining is, for Busy, how long the other claim's lease has left
	// (0 when unknown).
	Remaining time.Duration

	// held is, for a claim a RedisStore made, the local time before which
	// its lease surely holds (zero: unknown).
	held time.Time
}

var (
	// ErrLeaseLost reports that the claim's lease ended and someone else
	// may have claimed the event: the effect may have happened twice
	// unless it was recorded in the store with the claim (RedisStore's
	// DoneWith).
	ErrLeaseLost = errors.New("dedupe: lease lost")
	// ErrConfig reports an invalid configuration.
	ErrConfig = errors.New("dedupe: invalid configuration")
)

// Store records which events a consumer group has processed.
//
// Claim atomically takes (group, id) for lease when nobody has it, or when
// the previous claim's lease ended without Done; it reports Done when the
// event was processed, and Busy when another claimer holds a live lease.
// Done records the effect as done, kept for the store's retention; it returns
// ErrLeaseLost, and records nothing, when the claim is no longer held: its
// lease ended (whether or not another claimer has taken the event since),
// or it was released or taken over. A caller whose effect happened all the
// same claims the event again to record it, as the Deduper does. Done of a
// claim that is done already (a retry after a lost reply) returns nil.
// Release drops a claim still
// held, so a redelivery can run at once; releasing a claim that is gone is
// no error.
//
// Implementations are safe for concurrent use by many instances: the store
// is the only arbiter, and each call is one atomic operation on it.
// They never retry; the middleware does.
type Store interface {
	Claim(ctx context.Context, group, id string, lease time.Duration) (Claim, error)
	Done(ctx context.Context, c Claim) error
	Release(ctx context.Context, c Claim) error
}

// NewToken returns a random claim token.
func NewToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails since Go 1.24
	return hex.EncodeToString(b[:])
}

// Config configures Middleware. Group is required; every other zero field
// means the default.
type Config struct {
	// Group is the consumer group whose effects are deduplicated; two
	// groups process the same event independently. A RedisStore refuses
	// a group that starts with '}' (ErrConfig; see RedisStore.Key).
	Group string
	// Lease is how long a claim holds before another instance may take
	// the event over, as when the claimer died. The handler's ctx ends
	// a tenth of the lease before the lease does, so an effect that
	// honours ctx does not land after a takeover. Zero means 30s; it must
	// be at least 10ms, and at most a RedisStore's Retention.
	Lease time.Duration
	// MaxWait caps each wait for a Busy event's lease; zero means 1s.
	MaxWait time.Duration
	// Retry is the policy for Done and Release; zero means the retry
	// package's defaults. When it gives up, the error is returned marked
	// events.Unavailable, for the subscriber to retry until the store is
	// back.
	Retry retry.Policy
	// Now is the clock the batch path measures the age of its claims by;
	// nil means time.Now.
	Now func() time.Time
	// Key returns the ID an event is claimed and recorded under, the same
	// for every copy of one event and different for two events. Nil means
	// Key, the event's source and id together: CloudEvents makes only the
	// pair unique, so two sources may well number their events alike.
	// Every instance of a group must use the same Key; an instance that
	// keyed by the id alone (as before Key existed) and one that keys by
	// the pair do not see each other's records, so a fleet moving from one
	// to the other either accepts that an event redelivered during the
	// rollout may run twice, or sets Key to func(e events.Event) string {
	// return e.ID } until its producers' ids are known to be unique alone.
	Key func(events.Event) string
}

// Key is the default Config.Key: the event's source and id together, as
// "<length of source>:<source> <id>", which no two distinct pairs share.
func Key(e events.Event) string {
	return strconv.Itoa(len(e.Source)) + ":" + e.Source + " " + e.ID
}

type claimKey struct{}

// FromContext returns the claim the middleware holds for the event being
// handled, for a handler that records its effect in the store with the claim
// (RedisStore.DoneWith).
func FromContext(ctx context.Context) (Claim, bool) {
	c, ok := ctx.Value(claimKey{}).(Claim)
	return c, ok
}

// BatchStore is a Store that also claims, finishes and releases many events
// in one round trip. The batch path (Deduper.Begin) uses it when the Store
// has it, and otherwise calls Claim, Done and Release once per event.
//
// ClaimBatch returns the claims in the order of ids, each as Claim would.
// DoneBatch marks the claims done, whose effects happened; it returns, in
// the order of cs, nil or ErrLeaseLost for each claim, as Done would (a
// store may mark a lost claim done all the same: the effect happened); its
// error is for the call as a whole, which may have recorded some of them.
// ReleaseBatch releases each claim as Release would, ignoring claims that
// are not Claimed.
type BatchStore interface {
	Store
	ClaimBatch(ctx context.Context, group string, ids []string, lease time.Duration) ([]Claim, error)
	DoneBatch(ctx context.Context, cs []Claim) ([]error, error)
	ReleaseBatch(ctx context.Context, cs []Claim) error
}

// Deduper is the dedupe middleware in its two forms: per event
// (Middleware), for any subscriber, and per batch (Begin, an
// events.BatchMiddleware), for subscribers that take one, such as the Kafka
// subscriber's SubscriberConfig.Batch. Both give the same guarantee; the
// batch form needs two round trips to the store per batch instead of two
// per event. It is safe for concurrent use.
type Deduper struct {
	s   Store
	bs  BatchStore // s, when it is one
	cfg Config

	// undone holds, by event ID, the claims of events whose handler
	// succeeded but whose Done failed for the store: the redelivery the
	// subscriber makes once the store is back finishes them instead of
	// finding them Busy, waiting for their lease to end and running the
	// handler again.
	mu     sync.Mutex
	undone map[string]undoneClaim
}

// undoneClaim is a claim in Deduper.undone, with when it was put (a lookup
// takes it out; the next put drops entries older than undoneTTL).
type undoneClaim struct {
	c  Claim
	at time.Time
}

// undoneTTL is how long an undone claim is kept without a redelivery of its
// event: a subscriber retries in place every few seconds, so an entry older
// than this is for an event that went to another instance.
const undoneTTL = 10 * time.Minute

var _ events.BatchMiddleware = (*Deduper)(nil)

// New checks cfg and returns a Deduper on s. It makes no call to s.
func New(s Store, cfg Config) (*Deduper, error) {
	if s == nil {
		return nil, fmt.Errorf("%w: nil Store", ErrConfig)
	}
	if cfg.Group == "" {
		return nil, fmt.Errorf("%w: Group is empty", ErrConfig)
	}
	if cfg.Lease < 0 || cfg.MaxWait < 0 {
		return nil, fmt.Errorf("%w: negative duration", ErrConfig)
	}
	if cfg.Lease == 0 {
		cfg.Lease = 30 * time.Second
	}
	if cfg.Lease < 10*time.Millisecond {
		return nil, fmt.Errorf("%w: Lease %v under 10ms", ErrConfig, cfg.Lease)
	}
	if rs, ok := s.(*RedisStore); ok {
		if cfg.Lease > rs.retention {
			return nil, fmt.Errorf("%w: Lease %v longer than the RedisStore's Retention %v", ErrConfig, cfg.Lease, rs.retention)
		}
		if err := checkGroup(cfg.Group); err != nil {
			return nil, err
		}
	}
	if cfg.MaxWait == 0 {
		cfg.MaxWait = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Key == nil {
		cfg.Key = Key
	}
	if err := cfg.Retry.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	d := &Deduper{s: s, cfg: cfg}
	d.bs, _ = s.(BatchStore)
	return d, nil
}

// Middleware claims each event's ID for cfg.Group before the handler, skips
// events already done, waits while another instance holds the event, marks
// the event done after the handler succeeds and releases it when the handler
// fails or panics (the panic goes on). With a subscriber that delivers at
// least once, it gives an exactly-once effect when the handler's effect is
// idempotent per event ID, or is recorded in the store atomically with the
// claim (DoneWith): the one gap otherwise is an instance dying after the
// effect and before Done, which the lease turns into a second run after the
// lease ends. When the handler
// succeeds after its claim ran out, the event is claimed again and marked
// done without running it (its effect happened); only if another instance
// took it over in between does the effect run twice. A handler that records
// its effect with DoneWith must therefore return DoneWith's error.
//
// Store errors (after Config.Retry's retries of Done and Release) are
// returned marked events.Unavailable: the store failed, not the event, so a
// subscriber that keeps the events.Subscriber rule retries the event until
// the store is back and never dead-letters it for that; events.DeadLetter
// returns such an error rather than dead-lettering. When Done is what failed,
// the Deduper keeps the claim, and the event's redelivery to it marks the
// claim done without running the handler again. A handler error whose
// Release then failed is Unavailable too (the store is down, and the
// handler's failure may well be its consequence, as when DoneWith could not
// reach it); it is judged again once the store is back. ErrLeaseLost and
// configuration errors are not marked.
// Middleware(s, cfg) is New(s, cfg) followed by the Deduper's Middleware.
func Middleware(s Store, cfg Config) (events.Middleware, error) {
	d, err := New(s, cfg)
	if err != nil {
		return nil, err
	}
	return d.Middleware(), nil
}

// Middleware returns the per-event form; see the package-level Middleware.
func (d *Deduper) Middleware() events.Middleware {
	return func(next events.Handler) events.Handler {
		return func(ctx context.Context, e events.Event) error { return d.handle(ctx, e, next) }
	}
}

// handle is the per-event path: claim (waiting while Busy), run, then Done
// or Release, one round trip each.
func (d *Deduper) handle(ctx context.Context, e events.Event, next events.Handler) error {
	s, cfg := d.s, d.cfg
	id := cfg.Key(e)
	if c, ok := d.takeUndone(id); ok {
		return d.finish(ctx, c, e)
	}
	for {
		at := cfg.Now() // the lease runs from when the store took the claim
		c, err := s.Claim(ctx, cfg.Group, id, cfg.Lease)
		if err != nil {
			return storeError(fmt.Errorf("dedupe: claim %s: %w", id, err))
		}
		switch c.Status {
		case Done:
			return nil
		case Busy:
			if err := wait(ctx, min(max(c.Remaining, 10*time.Millisecond), cfg.MaxWait)); err != nil {
				return err
			}
			continue
		}
		return d.run(ctx, c, at, next, e)
	}
}

// run runs next under claim c, taken at or after at, then marks the event
// done or releases it. The handler's ctx ends a tenth of the lease before
// the lease does, counted from at: a late reply does not lengthen it.
func (d *Deduper) run(ctx context.Context, c Claim, at time.Time, next events.Handler, e events.Event) error {
	s, cfg := d.s, d.cfg
	hctx, cancel := context.WithTimeout(context.WithValue(ctx, claimKey{}, c), cfg.Lease-cfg.Lease/10-cfg.Now().Sub(at))
	defer cancel()
	// Finish even when ctx has ended: the effect is done or not, and the
	// store should say which (bounded by the lease).
	release := func() error {
		fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.Lease)
		defer fcancel()
		return retry.Do(fctx, cfg.Retry, func(ctx context.Context) error { return s.Release(ctx, c) })
	}
	returned := false
	defer func() {
		if !returned {
			// The handler panicked (or called runtime.Goexit): release
			// the claim as for an error, and let the panic go on
			// unrecovered, its stack intact, to whoever recovers it.
			_ = release()
		}
	}()
	err := next(hctx, e)
	returned = true
	cancel()
	if err != nil {
		if rerr := release(); rerr != nil {
			return errors.Join(err, storeError(fmt.Errorf("dedupe: release %s: %w", c.ID, rerr)))
		}
		return err
	}
	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.Lease)
	defer fcancel()
	return d.finishWithin(fctx, c, e)
}

// finish marks done the claim of an event whose effect happened, as run does
// after the handler succeeded.
func (d *Deduper) finish(ctx context.Context, c Claim, e events.Event) error {
	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.Lease)
	defer fcancel()
	return d.finishWithin(fctx, c, e)
}

// finishWithin marks c done with fctx; when the store fails, it keeps c in
// d.undone for the event's redelivery to finish.
func (d *Deduper) finishWithin(fctx context.Context, c Claim, e events.Event) error {
	s, cfg := d.s, d.cfg
	derr := retry.Do(fctx, cfg.Retry, func(ctx context.Context) error {
		err := s.Done(ctx, c)
		if errors.Is(err, ErrLeaseLost) {
			return retry.Permanent(err)
		}
		return err
	})
	if errors.Is(derr, ErrLeaseLost) {
		// The effect happened but the claim ran out first (the handler
		// overran its ctx). Failing would make the subscriber run it
		// again; record it as done instead, as the batch path does.
		var again Claim
		if again, derr = d.recordLost(fctx, c); again.Status == Claimed {
			c = again
		}
	}
	if derr != nil {
		d.putUndone(c.ID, c)
		return storeError(fmt.Errorf("dedupe: done %s: %w", c.ID, derr))
	}
	return nil
}

// putUndone keeps c, a claim of event id whose effect happened but which
// the store could not mark done, for the event's redelivery.
func (d *Deduper) putUndone(id string, c Claim) {
	now := d.cfg.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.undone == nil {
		d.undone = make(map[string]undoneClaim)
	}
	for k, u := range d.undone {
		if now.Sub(u.at) > undoneTTL {
			delete(d.undone, k)
		}
	}
	d.undone[id] = undoneClaim{c: c, at: now}
}

// takeUndone removes and returns the undone claim of event id, if any.
func (d *Deduper) takeUndone(id string) (Claim, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	u, ok := d.undone[id]
	if ok {
		delete(d.undone, id)
	}
	return u.c, ok
}

// storeError marks an error of the store as events.Unavailable: the store,
// not the event, failed, so a subscriber retries the event until the store
// is back instead of dead-lettering it. ErrLeaseLost is the store's answer,
// not its failure, and ErrConfig (a misconfiguration, which waiting does not
// mend) stays unmarked too.
func storeError(err error) error {
	if err == nil || errors.Is(err, ErrLeaseLost) || errors.Is(err, ErrConfig) {
		return err
	}
	return events.Unavailable(err)
}

func wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
