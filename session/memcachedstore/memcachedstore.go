package memcachedstore

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/activekit/activekit/session"
)

// Compile-time checks.
var (
	_ session.Store       = (*Store)(nil)
	_ session.Aliaser     = (*Store)(nil)
	_ session.UserIndex   = (*Store)(nil)
	_ session.SizeLimiter = (*Store)(nil)
)

// Defaults.
const (
	// DefaultPrefix starts every key the store writes unless WithPrefix says
	// otherwise.
	DefaultPrefix = "session:"
	// DefaultMaxAttempts bounds the gets/cas attempts of one write.
	DefaultMaxAttempts = 16
	// MaxPrefixLen is the longest prefix WithPrefix accepts, so that every
	// key stays within Memcached's 250 bytes.
	MaxPrefixLen = 128
)

const (
	maxHops = 4  // aliases followed per call (two rotations within a grace period)
	pruneAt = 64 // sessions in a user's index from which a login drops the ended ones
	// placeholderExpiration is the lifetime, in seconds, of the dead item
	// dropEnded adds in place of a missing session.
	placeholderExpiration = 10
	maxIDLen              = 64 // session.TokenID makes at most 52
	backoffMin            = 100 * time.Microsecond
	backoffMax            = 10 * time.Millisecond
	// Memcached reads an expiration above 30 days as a Unix time.
	maxRelativeExpiration = 30 * 24 * 60 * 60
)

// Errors of this package.
var (
	// ErrContention: a write lost its compare-and-swap race on every one of
	// its attempts (WithMaxAttempts). Nothing was written. It wraps a
	// *ContentionError.
	ErrContention = errors.New("memcachedstore: too much write contention")
	// ErrUserTag: a session was bound to a user but its ID does not carry
	// that user's tag (session.NewToken(user) makes such IDs).
	ErrUserTag = errors.New("memcachedstore: session ID not made for this user")
	// ErrInvalidID: an ID that session.TokenID could not have made.
	ErrInvalidID = errors.New("memcachedstore: invalid session ID")
)

// ContentionError says how many attempts a write made.
type ContentionError struct {
	// Op is the write: "apply", "delete", "alias", "index" or "destroy user".
	Op       string
	Attempts int
}

func (e *ContentionError) Error() string {
	return fmt.Sprintf("memcachedstore: %s: item still changing after %d compare-and-swap attempts", e.Op, e.Attempts)
}

// Unwrap returns ErrContention.
func (e *ContentionError) Unwrap() error { return ErrContention }

// Option configures a Store.
type Option interface{ apply(*Store) }

type optionFunc func(*Store)

func (f optionFunc) apply(s *Store) { f(s) }

// WithPrefix sets the prefix of every key (DefaultPrefix by default): at most
// MaxPrefixLen bytes of printable ASCII without spaces. Give each
// application, and each test, its own prefix.
func WithPrefix(prefix string) Option {
	return optionFunc(func(s *Store) { s.prefix = prefix; s.prefixSet = true })
}

// WithMaxAttempts bounds the gets/cas attempts of one write
// (DefaultMaxAttempts); a write that loses every race returns an error
// matching ErrContention. Attempts after the first wait a short random,
// growing time (at most 10ms) so that contending instances spread out.
// Writes to one session from one Store take turns, so races are lost only
// to other instances.
func WithMaxAttempts(n int) Option {
	return optionFunc(func(s *Store) { s.attempts = n })
}

// WithClock sets the clock deadlines are computed and checked on (time.Now
// by default). Tests pass a fake clock to expire sessions without waiting;
// in production every instance must read a real, synchronised (NTP) clock,
// since the deadlines one instance writes are checked by the others.
func WithClock(now func() time.Time) Option {
	return optionFunc(func(s *Store) { s.now = now })
}

// Store is a session store on Memcached through gomemcache. It is safe for
// concurrent use, by many goroutines and by many instances sharing the
// servers, and starts no goroutine of its own (gomemcache's GetMulti runs
// one per server for the duration of the call); closing the client is the
// caller's business.
//
// A session is one item holding the whole record (values, per-key versions,
// deadlines, user and revocation epoch) in a strict binary encoding. A write
// reads the item with gets, merges the delta, and stores it with cas; when
// another instance wrote in between, it reads and merges again, up to
// WithMaxAttempts times. This merge is the store's atomic operation (what a
// Lua script is to redisstore), not a retry of a failed call: a call that
// fails is reported, never retried.
//
// Keys:
//
//	<prefix>s:<id>    a session, or an alias left by a rotation
//	<prefix>u:<tag>   revocation epochs and session indexes of the users with that tag
//
// Expiry: each item's Memcached expiration is set a second or two past its
// earliest deadline (idle, absolute, or the end of an alias's grace), since
// Memcached counts whole seconds; the exact deadlines are in the item and
// checked on every read with the store's clock.
//
// Context: gomemcache takes no context. The store checks ctx before every
// round trip and while waiting between attempts; a round trip already sent
// is bounded by the client's Timeout (memcache.DefaultTimeout, 500ms, unless
// set).
//
// Memcached is a cache: it may evict any item under memory pressure, and a
// restart loses everything. An evicted session is a logged-out user. An
// evicted user item would lose revocation epochs, so a bound session whose
// user item is missing counts as revoked, and a user item made again (at
// the next login) starts at a random epoch, not 0, so that those sessions
// stay revoked: eviction never brings back a session that "log out
// everywhere" (or the eviction itself) ended. Give Memcached enough memory, or
// use redisstore, if logging users out under memory pressure is not
// acceptable.
type Store struct {
	c         *memcache.Client
	prefix    string
	prefixSet bool
	attempts  int
	now       func() time.Time

	// Writes to one key from this Store take turns (a one-slot semaphore
	// per stripe of keys), so that compare-and-swap races happen only
	// between instances, not between the goroutines of one.
	seed  maphash.Seed
	turns [64]chan struct{}
}

// New returns a store over c. Options are checked here.
func New(c *memcache.Client, opts ...Option) (*Store, error) {
	if c == nil {
		return nil, errors.New("memcachedstore: nil client")
	}
	s := &Store{c: c, seed: maphash.MakeSeed()}
	for i := range s.turns {
		s.turns[i] = make(chan struct{}, 1)
	}
	for _, o := range opts {
		if o == nil {
			return nil, errors.New("memcachedstore: nil option")
		}
		o.apply(s)
	}
	if !s.prefixSet {
		s.prefix = DefaultPrefix
	}
	if s.attempts == 0 {
		s.attempts = DefaultMaxAttempts
	}
	if s.now == nil {
		s.now = time.Now
	}
	if len(s.prefix) > MaxPrefixLen {
		return nil, fmt.Errorf("memcachedstore: prefix of %d bytes, at most %d", len(s.prefix), MaxPrefixLen)
	}
	for i := 0; i < len(s.prefix); i++ {
		if c := s.prefix[i]; c <= ' ' || c >= 0x7f {
			return nil, fmt.Errorf("memcachedstore: prefix %q: byte %#x not allowed in a Memcached key", s.prefix, c)
		}
	}
	if s.attempts < 0 {
		return nil, fmt.Errorf("memcachedstore: %d attempts: want at least 1", s.attempts)
	}
	return s, nil
}

func validID(id string) bool {
	if id == "" || len(id) > maxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func (s *Store) sessionKey(id string) string { return s.prefix + "s:" + id }

func (s *Store) usersKey(tag string) string { return s.prefix + "u:" + tag }

func (s *Store) nowMs() int64 { return s.now().UnixMilli() }

// expiration returns the Memcached expiration of an item that must live
// until deadline, both in Unix milliseconds: seconds from now, rounded up
// plus one for Memcached's whole-second clock, or, beyond 30 days, a Unix
// time (which Memcached reads on its own clock). A deadline already passed
// gives -1: expired at once.
func expiration(deadline, now int64) int32 {
	ms := deadline - now
	if ms <= 0 {
		return -1
	}
	if secs := (ms+999)/1000 + 1; secs <= maxRelativeExpiration {
		return int32(secs)
	}
	unix := deadline/1000 + 2
	if unix > math.MaxInt32 {
		return math.MaxInt32
	}
	return int32(unix)
}

// state is what a session key holds at a given time.
type state int

const (
	missing state = iota // no item
	dead                 // an expired or revoked record, or an ended alias
	aliased              // a live alias
	live                 // a live record
)

// view is one read of a session key (and of its user item).
type view struct {
	state  state
	item   *memcache.Item // nil when missing
	rec    *record        // for live
	target string         // for aliased
}

// read fetches the item of id, and the item of its user tag when id carries
// one, in one round trip, and says what it holds at now.
func (s *Store) read(ctx context.Context, id string) (view, error) {
	if err := ctx.Err(); err != nil {
		return view{}, err
	}
	key := s.sessionKey(id)
	var it, ui *memcache.Item
	if tag := session.HashTag(id); tag != id {
		items, err := s.c.GetMulti([]string{key, s.usersKey(tag)})
		if err != nil {
			return view{}, err
		}
		it, ui = items[key], items[s.usersKey(tag)]
	} else {
		var err error
		it, err = s.c.Get(key)
		if err != nil && !errors.Is(err, memcache.ErrCacheMiss) {
			return view{}, err
		}
	}
	if it == nil {
		return view{state: missing}, nil
	}
	v := view{state: dead, item: it}
	dec, err := decode(it.Value)
	if err != nil {
		return view{}, fmt.Errorf("%s: %w", key, err)
	}
	now := s.nowMs()
	switch {
	case dec.alias != nil:
		if now < dec.alias.deadline {
			v.state, v.target = aliased, dec.alias.target
		}
	case dec.rec != nil:
		r := dec.rec
		if now >= r.idle || now >= r.absolute || !s.epochValid(id, r, ui) {
			return v, nil
		}
		v.state, v.rec = live, r
	default:
		return view{}, fmt.Errorf("%s: %w: not a session", key, ErrCorrupt)
	}
	return v, nil
}

// epochValid reports whether record r of id has not been revoked: unbound,
// or bound at its user's current epoch. A missing or unreadable user item
// counts as revoked (see Store on eviction).
func (s *Store) epochValid(id string, r *record, ui *memcache.Item) bool {
	if r.user == "" {
		return true
	}
	if ui == nil || session.HashTag(id) != session.UserTag(r.user) {
		return false
	}
	u, err := decodeUsers(ui.Value)
	if err != nil {
		return false
	}
	e := u.entry(r.user)
	return e != nil && e.epoch == r.epoch
}

func (r *record) toSession(id string) session.Record {
	out := session.Record{
		ID:               id,
		Values:           make(map[string]session.Value, len(r.values)),
		Version:          r.version,
		User:             r.user,
		Created:          time.UnixMilli(r.created),
		IdleDeadline:     time.UnixMilli(r.idle),
		AbsoluteDeadline: time.UnixMilli(r.absolute),
	}
	for _, v := range r.values {
		out.Values[v.key] = session.Value{Data: v.data, Version: v.version}
	}
	return out
}

// refreshStep is how far a Load must move the idle deadline before it pays
// for a write: a hundredth of the idle timeout, at least a second, but never
// more than a tenth of it (the resolution session.Store allows).
func refreshStep(idle time.Duration) int64 {
	ms := idle.Milliseconds()
	return max(ms/100, min(1000, ms/10), 1)
}

// Load implements session.Store: one round trip to read. When idle > 0 and
// the idle deadline moves forward by more than a hundredth of idle (at least
// a second, or a tenth of idle when that is less), Load writes it back with
// cas, a second round trip; a session used many times a minute is so
// rewritten about once every idle/100. A refresh that loses a cas race is
// dropped: whoever won has written a deadline of their own.
func (s *Store) Load(ctx context.Context, id string, idle time.Duration) (session.Record, bool, error) {
	if err := ctx.Err(); err != nil {
		return session.Record{}, false, err
	}
	for range maxHops {
		if !validID(id) {
			return session.Record{}, false, nil
		}
		v, err := s.read(ctx, id)
		if err != nil {
			return session.Record{}, false, fmt.Errorf("memcachedstore: load: %w", err)
		}
		switch v.state {
		case missing, dead:
			return session.Record{}, false, nil
		case aliased:
			id = v.target
			continue
		}
		r := v.rec
		if idle > 0 {
			now := s.nowMs()
			if want := min(now+idle.Milliseconds(), r.absolute); want-r.idle >= refreshStep(idle) {
				old := r.idle
				r.idle = want
				err := s.c.CompareAndSwap(&memcache.Item{Key: v.item.Key, Value: encodeRecord(r), Expiration: expiration(r.idle, now), CasID: v.item.CasID})
				switch {
				case err == nil:
				case lostRace(err):
					r.idle = old
				default:
					return session.Record{}, false, fmt.Errorf("memcachedstore: load: refresh: %w", err)
				}
			}
		}
		return r.toSession(id), true, nil
	}
	return session.Record{}, false, nil
}

// lostRace reports whether a cas or add failed because another writer got
// there first (or the item vanished meanwhile).
func lostRace(err error) bool {
	return errors.Is(err, memcache.ErrCASConflict) || errors.Is(err, memcache.ErrNotStored) || errors.Is(err, memcache.ErrCacheMiss)
}

// wait sleeps before attempt (0-based; none before the first): a random
// time up to backoffMin·2^attempt, at most backoffMax.
func wait(ctx context.Context, attempt int) error {
	if attempt == 0 {
		return ctx.Err()
	}
	limit := min(backoffMin<<min(attempt, 16), backoffMax)
	t := time.NewTimer(time.Duration(rand.Int64N(int64(limit))) + 1)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// turn waits for this Store's turn to write key and returns the function
// that ends it.
func (s *Store) turn(ctx context.Context, key string) (func(), error) {
	ch := s.turns[maphash.String(s.seed, key)%uint64(len(s.turns))]
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// errRetry says that an attempt lost a race and should be made again.
var errRetry = errors.New("memcachedstore: lost a race")

// cas runs attempt until it returns something else than errRetry, at most
// s.attempts times.
func (s *Store) cas(ctx context.Context, op string, attempt func() error) error {
	for i := range s.attempts {
		if err := wait(ctx, i); err != nil {
			return err
		}
		if err := attempt(); !errors.Is(err, errRetry) {
			return err
		}
	}
	return &ContentionError{Op: op, Attempts: s.attempts}
}

// Apply implements session.Store: two round trips (gets, then cas or add),
// more when following an alias, binding a user or losing a race. A session
// whose item would be over the server's item size limit (memcached -I, 1MB
// by default) is refused, unchanged, with an error matching
// session.ErrTooLarge; keep the Manager's session limit (session.WithLimits)
// well below it.
func (s *Store) Apply(ctx context.Context, id string, d session.Delta) (uint64, error) {
	if err := d.Validate(); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	done, err := s.turn(ctx, s.sessionKey(id))
	if err != nil {
		return 0, err
	}
	defer done()
	var version uint64
	err = s.cas(ctx, "apply", func() error {
		var err error
		version, err = s.applyOnce(ctx, id, &d)
		return err
	})
	return version, err
}

func (s *Store) applyOnce(ctx context.Context, id string, d *session.Delta) (uint64, error) {
	for range maxHops {
		if !validID(id) {
			return 0, ErrInvalidID
		}
		v, err := s.read(ctx, id)
		if err != nil {
			return 0, fmt.Errorf("memcachedstore: apply: %w", err)
		}
		now := s.nowMs()
		var r *record
		switch {
		case v.state == aliased && d.Create == nil:
			if len(d.Expect) > 0 {
				// The versions were read from the record before it was
				// copied to the target, whose versions start again.
				return 0, &session.ConflictError{}
			}
			id = v.target
			continue
		case v.state == aliased || v.state == live:
			if d.Create != nil {
				return 0, &session.ConflictError{}
			}
			r = v.rec
		case d.Create == nil: // missing or dead
			return 0, session.ErrNotFound
		default:
			r = &record{created: now, absolute: now + d.Create.Absolute.Milliseconds()}
			if !d.Create.Deadline.IsZero() {
				r.created, r.absolute = d.Create.Created.UnixMilli(), d.Create.Deadline.UnixMilli()
			}
			if now >= r.absolute {
				return 0, session.ErrNotFound
			}
		}
		for k, want := range d.Expect {
			if r.get(k).version != want {
				return 0, &session.ConflictError{Key: k}
			}
		}
		if d.User != "" && d.User != r.user {
			if session.HashTag(id) != session.UserTag(d.User) {
				return 0, ErrUserTag
			}
			epoch, err := s.index(ctx, id, d.User, r.absolute)
			if err != nil {
				return 0, err
			}
			r.user, r.epoch = d.User, epoch
		}
		r.merge(d, now)
		if d.MaxSize > 0 && len(d.Set) > 0 {
			if n := r.size(); n > d.MaxSize {
				return 0, &session.SizeError{Size: n, Limit: d.MaxSize, Session: true}
			}
		}
		it := &memcache.Item{Key: s.sessionKey(id), Value: encodeRecord(r), Expiration: expiration(r.idle, now)}
		if v.item == nil {
			err = s.c.Add(it)
		} else {
			it.CasID = v.item.CasID
			err = s.c.CompareAndSwap(it)
		}
		switch {
		case err == nil:
			return r.version, nil
		case lostRace(err):
			return 0, errRetry
		case tooLarge(err):
			return 0, fmt.Errorf("memcachedstore: apply: an item of %d bytes is over the server's item size limit (memcached -I): %w", len(it.Key)+len(it.Value), session.ErrTooLarge)
		default:
			return 0, fmt.Errorf("memcachedstore: apply: %w", err)
		}
	}
	return 0, session.ErrNotFound
}

// tooLarge reports whether a store command failed because the item is over
// the server's item size limit. gomemcache has no error value for it, only
// the server's reply in its message.
func tooLarge(err error) bool {
	return strings.Contains(err.Error(), "SERVER_ERROR object too large for cache")
}

// EnforcesMaxSize implements session.SizeLimiter: Apply measures the record
// it merged under cas, and refuses a delta that takes it past
// Delta.MaxSize, so that writes racing from several instances cannot take
// a session over its limit together.
func (s *Store) EnforcesMaxSize() bool { return true }

// size is the sum, over the record's keys, of the key's length and its
// data's length (see session.Delta.MaxSize).
func (r *record) size() int {
	n := 0
	for _, v := range r.values {
		n += len(v.key) + len(v.data)
	}
	return n
}

// get returns the value of key, or the zero value.
func (r *record) get(key string) value {
	if i, ok := r.find(key); ok {
		return r.values[i]
	}
	return value{}
}

// merge applies the sets and deletions of d as a new version, and moves the
// idle deadline forward (never backwards). r.values stays sorted by key.
func (r *record) merge(d *session.Delta, now int64) {
	r.version++
	for k, data := range d.Set {
		i, ok := r.find(k)
		if ok {
			r.values[i] = value{key: k, version: r.version, data: data}
		} else {
			r.values = slices.Insert(r.values, i, value{key: k, version: r.version, data: data})
		}
	}
	for _, k := range d.Delete {
		if i, ok := r.find(k); ok {
			r.values = slices.Delete(r.values, i, i+1)
		}
	}
	r.idle = max(r.idle, min(now+d.Idle.Milliseconds(), r.absolute))
}

func (r *record) find(key string) (int, bool) {
	return slices.BinarySearchFunc(r.values, key, func(v value, key string) int { return strings.Compare(v.key, key) })
}

// index adds id, which lives until deadline, to user's index and returns the
// user's current revocation epoch. Once the index holds pruneAt sessions, it
// first drops those that have ended (see dropEnded), so that a user who logs
// in and out again and again does not grow the user item until it no longer
// fits in Memcached.
func (s *Store) index(ctx context.Context, id, user string, deadline int64) (uint64, error) {
	var epoch uint64
	err := s.updateUsers(ctx, "index", session.UserTag(user), func(u *users) (bool, error) {
		// A new entry starts at a random epoch, not 0: the entry may be new
		// because Memcached evicted the old one, and sessions bound at the
		// old entry's epochs must stay revoked (see Store).
		e := u.ensure(user, rand.Uint64())
		if len(e.sessions) >= pruneAt {
			if err := s.dropEnded(ctx, e, id); err != nil {
				return false, err
			}
		}
		e.add(id, deadline)
		epoch = e.epoch
		return true, nil
	})
	return epoch, err
}

// dropEnded removes from e the sessions (other than id) that have ended:
// expired, revoked, deleted, or renewed (an alias). An ended session may be
// made again by an Apply that read it a moment ago and has indexed it
// already: a missing item may be a session being created, a dead one a
// session being created over it. So an entry is dropped only once its item
// is claimed: a dead placeholder added in place of a missing item, or
// swapped with cas for a dead one. The Apply's add or cas then fails, and its
// next attempt reads the placeholder, indexes the session again and writes
// over it. A live alias is dropped unclaimed (no session is made over it
// before it ends); a live session not bound to the user, which an Apply may
// be binding, and an entry whose item changed meanwhile are kept.
func (s *Store) dropEnded(ctx context.Context, e *userEntry, id string) error {
	keys := make([]string, 0, len(e.sessions))
	for _, is := range e.sessions {
		keys = append(keys, s.sessionKey(is.id))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	items, err := s.c.GetMulti(keys)
	if err != nil {
		return fmt.Errorf("memcachedstore: index: %w", err)
	}
	now := s.nowMs()
	kept := e.sessions[:0]
	for _, is := range e.sessions {
		key := s.sessionKey(is.id)
		it := items[key]
		if is.id == id {
			kept = append(kept, is)
			continue
		}
		if it != nil {
			if d, err := decode(it.Value); err == nil { // else corrupt: claimed
				switch r := d.rec; {
				case d.alias != nil && now < d.alias.deadline:
					continue // a live alias: renewed
				case r == nil || now >= r.idle || now >= r.absolute:
					// ended: claimed
				case r.user == e.user && r.epoch == e.epoch:
					kept = append(kept, is) // live
					continue
				case r.user != e.user:
					// Live, and not (yet) bound to the user: an Apply may be
					// binding it right now, having indexed it.
					kept = append(kept, is)
					continue
				}
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		placeholder := &memcache.Item{Key: key, Value: encodeAlias(alias{target: is.id}), Expiration: placeholderExpiration}
		if it == nil {
			err = s.c.Add(placeholder)
		} else {
			placeholder.CasID = it.CasID
			err = s.c.CompareAndSwap(placeholder)
		}
		switch {
		case err == nil: // claimed: ended
		case lostRace(err): // changed meanwhile
			kept = append(kept, is)
		default:
			return fmt.Errorf("memcachedstore: index: %w", err)
		}
	}
	e.sessions = kept
	return nil
}

// updateUsers changes the user item of tag under gets/cas: change edits it
// and reports whether to write it.
func (s *Store) updateUsers(ctx context.Context, op, tag string, change func(*users) (bool, error)) error {
	key := s.usersKey(tag)
	return s.cas(ctx, op, func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		it, err := s.c.Get(key)
		if err != nil && !errors.Is(err, memcache.ErrCacheMiss) {
			return fmt.Errorf("memcachedstore: %s: %w", op, err)
		}
		u := &users{}
		if it != nil {
			if u, err = decodeUsers(it.Value); err != nil {
				return fmt.Errorf("memcachedstore: %s: %s: %w", op, key, err)
			}
		}
		u.prune(s.nowMs())
		if write, err := change(u); err != nil || !write {
			return err
		}
		now := s.nowMs()
		next := &memcache.Item{Key: key, Value: encodeUsers(u), Expiration: expiration(u.until(), now)}
		if it == nil {
			err = s.c.Add(next)
		} else {
			next.CasID = it.CasID
			err = s.c.CompareAndSwap(next)
		}
		switch {
		case err == nil:
			return nil
		case lostRace(err):
			return errRetry
		default:
			return fmt.Errorf("memcachedstore: %s: %w", op, err)
		}
	})
}

// Delete implements session.Store: a read (to follow an alias) and a cas
// that expires the item read at once; read and cas again if it changed
// meanwhile (a concurrent renewal may have made it an alias). An alias's
// target is deleted before the alias, so that a Delete that ends half-way
// (its context cancelled, a failure) leaves the alias leading to a deleted
// target, which a second Delete of the same ID finishes; never the alias
// gone and the renewed session alive under an ID the caller does not know.
func (s *Store) Delete(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.delete(ctx, id, maxHops)
}

// delete deletes id, after the target of its alias (following up to hops
// items in all).
func (s *Store) delete(ctx context.Context, id string, hops int) error {
	if hops == 0 || !validID(id) {
		return nil
	}
	return s.cas(ctx, "delete", func() error {
		key := s.sessionKey(id)
		v, err := s.read(ctx, id)
		if errors.Is(err, ErrCorrupt) {
			// Delete it all the same.
			if err := s.c.Delete(key); err != nil && !errors.Is(err, memcache.ErrCacheMiss) {
				return fmt.Errorf("memcachedstore: delete: %w", err)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("memcachedstore: delete: %w", err)
		}
		if v.state == missing {
			return nil
		}
		if v.state == aliased {
			if err := s.delete(ctx, v.target, hops-1); err != nil {
				return err
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		// A cas that expires the item at once: deleted only if it is
		// still what was read. A plain delete would also delete an
		// alias that a concurrent renewal made of a record read here,
		// and leave its target (the renewed session) alive.
		err = s.c.CompareAndSwap(&memcache.Item{Key: key, Value: v.item.Value, Flags: v.item.Flags, Expiration: -1, CasID: v.item.CasID})
		switch {
		case err == nil:
			return nil
		case errors.Is(err, memcache.ErrCacheMiss):
			return nil // gone meanwhile
		case lostRace(err):
			return errRetry
		default:
			return fmt.Errorf("memcachedstore: delete: %w", err)
		}
	})
}

// Alias implements session.Aliaser: the record of oldID is replaced, under
// cas, by an alias that expires after grace (rounded up to a millisecond).
func (s *Store) Alias(ctx context.Context, oldID, newID string, ifVersion uint64, grace time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !validID(oldID) || !validID(newID) {
		return ErrInvalidID
	}
	ms := max((grace + time.Millisecond - 1).Milliseconds(), 1)
	return s.cas(ctx, "alias", func() error {
		v, err := s.read(ctx, oldID)
		if err != nil {
			return fmt.Errorf("memcachedstore: alias: %w", err)
		}
		if v.state != live {
			return session.ErrNotFound
		}
		if v.rec.version != ifVersion {
			return &session.ConflictError{}
		}
		now := s.nowMs()
		a := alias{target: newID, deadline: now + ms}
		err = s.c.CompareAndSwap(&memcache.Item{Key: v.item.Key, Value: encodeAlias(a), Expiration: expiration(a.deadline, now), CasID: v.item.CasID})
		switch {
		case err == nil:
			return nil
		case lostRace(err):
			return errRetry
		default:
			return fmt.Errorf("memcachedstore: alias: %w", err)
		}
	})
}

// Sessions implements session.UserIndex: two round trips (the user item,
// then every indexed session at once), keeping only the live sessions bound
// to user at the current epoch. Ended sessions stay in the index until
// their absolute deadline, DestroyUser, or a login that finds 64 sessions
// indexed and drops the ended ones, so the list is filtered on every call.
func (s *Store) Sessions(ctx context.Context, user string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	tag := session.UserTag(user)
	ukey := s.usersKey(tag)
	ui, err := s.c.Get(ukey)
	if errors.Is(err, memcache.ErrCacheMiss) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("memcachedstore: sessions: %w", err)
	}
	u, err := decodeUsers(ui.Value)
	if err != nil {
		return nil, fmt.Errorf("memcachedstore: sessions: %s: %w", ukey, err)
	}
	e := u.entry(user)
	if e == nil || len(e.sessions) == 0 {
		return nil, nil
	}
	keys := make([]string, 0, len(e.sessions))
	for _, is := range e.sessions {
		keys = append(keys, s.sessionKey(is.id))
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	items, err := s.c.GetMulti(keys)
	if err != nil {
		return nil, fmt.Errorf("memcachedstore: sessions: %w", err)
	}
	now := s.nowMs()
	var ids []string
	for _, is := range e.sessions {
		it := items[s.sessionKey(is.id)]
		if it == nil {
			continue
		}
		d, err := decode(it.Value)
		if err != nil || d.rec == nil {
			continue
		}
		r := d.rec
		if r.user == user && r.epoch == e.epoch && now < r.idle && now < r.absolute {
			ids = append(ids, is.id)
		}
	}
	return ids, nil
}

// DestroyUser implements session.UserIndex: the user's revocation epoch is
// incremented under cas, which ends every session bound before, indexed or
// not; then the indexed sessions are deleted to free their memory. A user
// with no entry has nothing to revoke.
func (s *Store) DestroyUser(ctx context.Context, user string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var ids []string
	err := s.updateUsers(ctx, "destroy user", session.UserTag(user), func(u *users) (bool, error) {
		e := u.entry(user)
		if e == nil {
			return false, nil
		}
		e.epoch++
		ids = ids[:0]
		for _, is := range e.sessions {
			ids = append(ids, is.id)
		}
		e.sessions = nil
		return true, nil
	})
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.c.Delete(s.sessionKey(id)); err != nil && !errors.Is(err, memcache.ErrCacheMiss) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		// The sessions are revoked already; only their memory is not freed.
		return fmt.Errorf("memcachedstore: destroy user: revoked, but deleting sessions: %w", errors.Join(errs...))
	}
	return nil
}
