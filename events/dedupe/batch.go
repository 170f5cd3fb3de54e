package dedupe

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math/bits"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/retry"
)

// state is where one event of a batch stands.
type state uint8

const (
	stUnclaimed state = iota // no claim held: the per-event path handles it
	stClaimed                // claimed by the batch, handler not run yet
	stBusy                   // another claimer held it: the per-event path waits
	stSucceeded              // handler succeeded under the batch's claim; Done pending
	stReleased               // handler failed; claim released; retries go per event
	stDone                   // effect done (by us, or known done): skip
)

// Begin claims every event of es for the group in one round trip (one
// ClaimBatch when the store is a BatchStore) and returns the batch. It
// implements events.BatchMiddleware.
//
// Each event of the batch then gets exactly what the per-event Middleware
// gives it, with the round trips moved to the batch's edges:
//
//   - Handle skips an event the store reported done; runs the handler on an
//     event the batch claimed, with the claim in its ctx (FromContext, for
//     DoneWith) and its ctx ending a tenth of the lease before the batch's
//     claims do; and hands an event another claimer holds (Busy) to the
//     per-event path, which waits for that claim to end, after recording
//     as done what already succeeded.
//   - An event whose ID an earlier event of the batch has (a republished
//     copy) is not claimed by the batch: it takes the per-event path, which
//     finds the first copy's effect recorded, so the effect runs once.
//   - A handler error releases the event's claim at once, so that the
//     subscriber's retries (and a redelivery) go through the per-event path.
//   - Once half the lease has passed since the claims were taken, the next
//     Handle records the succeeded events as done and renews the remaining
//     claims (release and claim again), so no claim runs out mid-batch
//     while the handlers keep within their ctx.
//   - End records every event that succeeded as done in one round trip
//     (DoneBatch), and releases the claims of events never handled (the
//     subscriber stopped), so another instance can take them at once. It
//     runs even when ctx has ended, for up to a lease. The subscriber
//     acknowledges the events only after End returned nil.
//
// Every error of the store, from Begin, Handle or End, is marked
// events.Unavailable, as with the Middleware: the subscriber retries the
// event (or the batch's edge) until the store is back and never
// dead-letters it for that. A Handle retried after such an error picks up
// where the failed one stopped: succeeded events not yet recorded stay
// pending, claims that ran out meanwhile are renewed or taken again, and an
// event the batch no longer holds goes through the per-event path.
//
// The guarantee is the Middleware's: an event the store records as done is
// never run again by any instance (within the store's retention), and an
// event is never run by two claimers at once while each handler keeps within
// its ctx. The window in which a dying instance leaves an effect done but
// not recorded, and so run again by the next claimer after the lease, spans
// from the effect to End instead of to the event's own Done: a handler that
// records its effect with the claim (RedisStore.DoneWith) or makes it
// idempotent per event ID closes it, as with the Middleware. A claim whose
// lease ended before End (the handler overran its ctx) is claimed again and
// marked done without running the handler, since its effect happened; only
// if another claimer took it over in between may its effect run twice.
func (d *Deduper) Begin(ctx context.Context, es []events.Event) (events.Batch, error) {
	keys := make([]string, len(es))
	for i, e := range es {
		keys[i] = d.cfg.Key(e)
	}
	b := &batch{d: d, es: es, keys: keys, st: make([]state, len(es)), dup: repeats(keys)}
	if err := b.claim(ctx, 0); err != nil {
		return nil, err
	}
	return b, nil
}

// repeats marks the events whose key (Config.Key) an earlier event has
// (copies of it, republished): those are never claimed by the batch, so Handle takes
// the per-event path for them, which finds the first copy's effect recorded
// (or runs it, as for a redelivery, when that copy failed). It returns nil
// when there are none.
//
// It finds them with an open-addressing table of event indexes, at most
// half full: one allocation of 4 to 8 bytes per event, where a map of the
// IDs took some 50.
func repeats(keys []string) []bool {
	if len(keys) < 2 {
		return nil
	}
	mask := uint64(1)<<bits.Len(uint(2*len(keys)-1)) - 1
	slots := make([]int32, mask+1) // 1 + the index of the event holding the slot; 0: free
	seed := maphash.MakeSeed()
	var dup []bool
	for i, key := range keys {
		for j := maphash.String(seed, key) & mask; ; j = (j + 1) & mask {
			k := slots[j]
			if k == 0 {
				slots[j] = int32(i + 1)
				break
			}
			if keys[k-1] == key {
				if dup == nil {
					dup = make([]bool, len(keys))
				}
				dup[i] = true
				break
			}
		}
	}
	return dup
}

// batch is one Begin's state; the subscriber uses it from one goroutine.
type batch struct {
	d      *Deduper
	es     []events.Event
	keys   []string // Config.Key of each event
	claims []Claim  // made by the first claim; nil before
	st     []state
	at     time.Time // when the batch's live claims were taken
	// pending are the stSucceeded events, in order; consecutive unless
	// Handle skipped an index or a flush stopped partway.
	pending []int
	dup     []bool // events whose ID an earlier event of the batch has; nil when none

	// hctx are the handlers' ctx, one per event (each carries its claim),
	// made in one allocation; an event run again after a renewal gets a
	// new one, as its first handler may have kept its own.
	hctx []claimCtx

	// The handlers' ctx end a tenth of the lease before the claims taken
	// at lat: that ctx is made once for a parent ctx (the subscriber
	// passes the same one for every event) rather than a timer per event.
	lctx, lparent context.Context
	lat           time.Time
	lcancel       context.CancelFunc
}

// claimCtx is the ctx an event's handler runs with: its parent's, plus the
// claim the batch holds for the event (FromContext). It answers as
// context.WithValue(parent, claimKey{}, c) would, with one allocation per
// batch (batch.hctx) instead of two per event.
type claimCtx struct {
	context.Context
	c Claim
}

func (c *claimCtx) Value(key any) any {
	if _, ok := key.(claimKey); ok {
		return c.c
	}
	return c.Context.Value(key)
}

// leaseCtx returns a ctx under parent that ends a tenth of the lease before
// the batch's claims do.
func (b *batch) leaseCtx(parent context.Context) context.Context {
	if b.lctx == nil || parent != b.lparent || !b.lat.Equal(b.at) {
		if b.lcancel != nil {
			b.lcancel()
		}
		cfg := &b.d.cfg
		left := cfg.Lease - cfg.Lease/10 - cfg.Now().Sub(b.at)
		b.lctx, b.lcancel = context.WithTimeout(parent, left)
		b.lparent, b.lat = parent, b.at
	}
	return b.lctx
}

// claim claims, in one round trip, every event from index from on that is
// not known done or held by the batch.
func (b *batch) claim(ctx context.Context, from int) error {
	ids := make([]string, 0, len(b.es)-from)
	for i := from; i < len(b.es); i++ {
		if b.claimable(i) {
			ids = append(ids, b.keys[i])
		}
	}
	if len(ids) == 0 {
		return nil
	}
	now := b.d.cfg.Now()
	cs, err := b.d.claimBatch(ctx, ids)
	if err != nil {
		return storeError(fmt.Errorf("dedupe: claim batch: %w", err))
	}
	b.at = now
	switch {
	case b.claims == nil && len(cs) == len(b.es):
		// One claim per event, in order: the batch keeps the store's
		// reply (its caller's to keep) rather than a copy.
		b.claims = cs
	case b.claims == nil:
		b.claims = make([]Claim, len(b.es))
	}
	for i, k := from, 0; k < len(cs); i++ {
		if !b.claimable(i) {
			continue
		}
		b.claims[i] = cs[k]
		switch cs[k].Status {
		case Claimed:
			b.st[i] = stClaimed
		case Done:
			b.st[i] = stDone
		default:
			b.st[i] = stBusy
		}
		k++
	}
	return nil
}

// claimable reports whether claim should claim es[i]: it is no copy of an
// earlier event, and neither known done nor held by the batch.
func (b *batch) claimable(i int) bool {
	if b.dup != nil && b.dup[i] {
		return false
	}
	return b.st[i] == stUnclaimed || b.st[i] == stBusy || b.st[i] == stReleased
}

// Handle implements events.Batch.
func (b *batch) Handle(ctx context.Context, i int, next events.Handler) error {
	if i < 0 || i >= len(b.es) {
		return fmt.Errorf("dedupe: batch index %d out of range [0,%d)", i, len(b.es))
	}
	if lease := b.d.cfg.Lease; b.d.cfg.Now().Sub(b.at) > lease/2 && b.holds(i) {
		if err := b.renew(ctx, i); err != nil {
			return err
		}
	}
	switch b.st[i] {
	case stDone, stSucceeded:
		return nil
	case stClaimed:
		return b.run(ctx, i, next)
	}
	// Busy, released after a failure, or unclaimed after a store error:
	// the per-event path, after recording what already succeeded so that
	// a long wait here cannot outlast those claims.
	if err := b.flush(ctx); err != nil {
		return err
	}
	if err := b.d.handle(ctx, b.es[i], next); err != nil {
		return err
	}
	b.st[i] = stDone
	return nil
}

// holds reports whether the batch holds claims that are still to be run
// from index i on, or Done marks still to be recorded.
func (b *batch) holds(i int) bool {
	if len(b.pending) > 0 {
		return true
	}
	for ; i < len(b.es); i++ {
		if b.st[i] == stClaimed {
			return true
		}
	}
	return false
}

// run runs the handler on es[i] under the batch's claim.
func (b *batch) run(ctx context.Context, i int, next events.Handler) error {
	if b.hctx == nil {
		b.hctx = make([]claimCtx, len(b.es))
	}
	hctx := &b.hctx[i]
	if hctx.Context != nil {
		hctx = new(claimCtx)
	}
	*hctx = claimCtx{b.leaseCtx(ctx), b.claims[i]}
	err := next(hctx, b.es[i])
	if err == nil {
		b.st[i] = stSucceeded
		if b.pending == nil {
			b.pending = make([]int, 0, len(b.es)-i)
		}
		b.pending = append(b.pending, i)
		return nil
	}
	b.st[i] = stReleased
	return b.releaseFailed(ctx, b.claims[i], err)
}

// releaseFailed releases c, whose handler failed with err, and returns err,
// joined with the store's error when the release failed.
func (b *batch) releaseFailed(ctx context.Context, c Claim, err error) error {
	cfg := &b.d.cfg
	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.Lease)
	defer fcancel()
	if rerr := retry.Do(fctx, cfg.Retry, func(ctx context.Context) error { return b.d.s.Release(ctx, c) }); rerr != nil {
		return errors.Join(err, storeError(fmt.Errorf("dedupe: release %s: %w", c.ID, rerr)))
	}
	return err
}

// renew records what succeeded as done, releases the claims not yet run
// from index i on, and claims those events again, with a fresh lease.
func (b *batch) renew(ctx context.Context, i int) error {
	if err := b.flush(ctx); err != nil {
		return err
	}
	b.release(ctx, i)
	return b.claim(ctx, i)
}

// release releases the batch's claims not yet run from index i on. A
// failure is not reported: the claims then end with their lease.
func (b *batch) release(ctx context.Context, i int) {
	var cs []Claim
	for ; i < len(b.es); i++ {
		if b.st[i] == stClaimed {
			cs = append(cs, b.claims[i])
			b.st[i] = stUnclaimed
		}
	}
	if len(cs) == 0 {
		return
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.d.cfg.Lease)
	defer cancel()
	_ = retry.Do(fctx, b.d.cfg.Retry, func(ctx context.Context) error { return b.d.releaseBatch(ctx, cs) })
}

// flush records the succeeded events as done, in one round trip. It is
// safe to repeat after a failure: a claim already marked done reports
// success.
func (b *batch) flush(ctx context.Context) error {
	if len(b.pending) == 0 {
		return nil
	}
	cfg := &b.d.cfg
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.Lease)
	defer cancel()
	cs := b.pendingClaims()
	var res []error
	err := retry.Do(fctx, cfg.Retry, func(ctx context.Context) error {
		var err error
		res, err = b.d.doneBatch(ctx, cs)
		return err
	})
	if err != nil {
		return storeError(fmt.Errorf("dedupe: done batch: %w", err))
	}
	for k, i := range b.pending {
		if errors.Is(res[k], ErrLeaseLost) {
			if c, err := b.d.recordLost(fctx, cs[k]); err != nil {
				if c.Status == Claimed {
					// The next flush marks it done under the claim
					// recordLost took, which it would otherwise find
					// Busy and take for another claimer's.
					b.claims[i] = c
				}
				b.pending = b.pending[k:]
				return err
			}
		}
		b.st[i] = stDone
	}
	b.pending = b.pending[:0]
	return nil
}

// pendingClaims returns the claims of the pending events, in their order:
// when the events are consecutive, as they are unless a failure
// intervened, a part of b.claims (capped, so that a store appending to it
// cannot write over the claims that follow), else a copy.
func (b *batch) pendingClaims() []Claim {
	p := b.pending
	first, consecutive := p[0], true
	for k, i := range p {
		if i != first+k {
			consecutive = false
			break
		}
	}
	if consecutive {
		return b.claims[first : first+len(p) : first+len(p)]
	}
	cs := make([]Claim, len(p))
	for k, i := range p {
		cs[k] = b.claims[i]
	}
	return cs
}

// End implements events.Batch.
func (b *batch) End(ctx context.Context) error {
	if b.lcancel != nil {
		b.lcancel()
	}
	if err := b.flush(ctx); err != nil {
		return err
	}
	b.release(ctx, 0)
	return nil
}

// recordLost records as done an event whose handler succeeded under a claim
// that ended before it was marked done: when nobody claimed it since, it is
// claimed again and marked done without running the handler (the effect
// happened). When another claimer holds it, that claimer runs it again:
// nothing can be done about that here. When the store fails after the event
// was claimed again, the error comes with that claim, for the caller to
// mark done later.
func (d *Deduper) recordLost(ctx context.Context, old Claim) (Claim, error) {
	cfg := &d.cfg
	c, err := retry.DoValue(ctx, cfg.Retry, func(ctx context.Context) (Claim, error) {
		return d.s.Claim(ctx, old.Group, old.ID, cfg.Lease)
	})
	if err != nil {
		return Claim{}, storeError(fmt.Errorf("dedupe: claim %s again after its lease ended: %w", old.ID, err))
	}
	if c.Status != Claimed {
		return Claim{}, nil
	}
	err = retry.Do(ctx, cfg.Retry, func(ctx context.Context) error {
		err := d.s.Done(ctx, c)
		if errors.Is(err, ErrLeaseLost) {
			return retry.Permanent(err)
		}
		return err
	})
	if err != nil && !errors.Is(err, ErrLeaseLost) {
		return c, storeError(fmt.Errorf("dedupe: done %s: %w", old.ID, err))
	}
	return Claim{}, nil
}

func (d *Deduper) claimBatch(ctx context.Context, ids []string) ([]Claim, error) {
	if d.bs != nil {
		cs, err := d.bs.ClaimBatch(ctx, d.cfg.Group, ids, d.cfg.Lease)
		if err == nil && len(cs) != len(ids) {
			err = fmt.Errorf("dedupe: ClaimBatch returned %d claims for %d IDs", len(cs), len(ids))
		}
		return cs, err
	}
	cs := make([]Claim, len(ids))
	for i, id := range ids {
		c, err := d.s.Claim(ctx, d.cfg.Group, id, d.cfg.Lease)
		if err != nil {
			// Give back what was taken, so nobody waits for it, even
			// when the claim failed because ctx ended.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_ = d.releaseBatch(rctx, cs[:i])
			cancel()
			return nil, err
		}
		cs[i] = c
	}
	return cs, nil
}

func (d *Deduper) doneBatch(ctx context.Context, cs []Claim) ([]error, error) {
	if d.bs != nil {
		res, err := d.bs.DoneBatch(ctx, cs)
		if err == nil && len(res) != len(cs) {
			err = fmt.Errorf("dedupe: DoneBatch returned %d results for %d claims", len(res), len(cs))
		}
		return res, err
	}
	res := make([]error, len(cs))
	for i, c := range cs {
		err := d.s.Done(ctx, c)
		if err != nil && !errors.Is(err, ErrLeaseLost) {
			return nil, err
		}
		res[i] = err
	}
	return res, nil
}

func (d *Deduper) releaseBatch(ctx context.Context, cs []Claim) error {
	if d.bs != nil {
		return d.bs.ReleaseBatch(ctx, cs)
	}
	var errs []error
	for _, c := range cs {
		if c.Status == Claimed {
			errs = append(errs, d.s.Release(ctx, c))
		}
	}
	return errors.Join(errs...)
}
