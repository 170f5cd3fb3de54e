package redisstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/internal/redisonce"
	"github.com/activekit/activekit/session"
)

// Compile-time checks.
var (
	_ session.Store       = (*Store)(nil)
	_ session.Aliaser     = (*Store)(nil)
	_ session.UserIndex   = (*Store)(nil)
	_ session.SizeLimiter = (*Store)(nil)
)

// DefaultPrefix starts every key the store writes unless WithPrefix says
// otherwise.
const DefaultPrefix = "session:"

// maxHops bounds how many aliases a call follows (a session renewed twice
// within one grace period has a chain of two).
const maxHops = 4

// Errors of this package.
var (
	// ErrNotReplicated: WithWait was set and fewer replicas than asked
	// acknowledged a write in time. The write was applied on the primary;
	// it may be lost if the primary fails over now. It wraps a
	// *NotReplicatedError.
	ErrNotReplicated = errors.New("redisstore: write not acknowledged by enough replicas")
	// ErrUserTag: a session was bound to a user but its ID does not carry
	// that user's tag (session.NewToken(user) makes such IDs).
	ErrUserTag = errors.New("redisstore: session ID not made for this user")
	// ErrInvalidID: an ID that session.TokenID could not have made.
	ErrInvalidID = errors.New("redisstore: invalid session ID")
)

// NotReplicatedError says how many replicas acknowledged a write.
type NotReplicatedError struct {
	Acked, Wanted int
}

func (e *NotReplicatedError) Error() string {
	return fmt.Sprintf("redisstore: write acknowledged by %d of %d replicas", e.Acked, e.Wanted)
}

// Unwrap returns ErrNotReplicated.
func (e *NotReplicatedError) Unwrap() error { return ErrNotReplicated }

// Option configures a Store.
type Option interface{ apply(*Store) }

type optionFunc func(*Store)

func (f optionFunc) apply(s *Store) { f(s) }

// WithPrefix sets the prefix of every key (DefaultPrefix by default). It must
// not contain '{' or '}', which would change the keys' hash slots. Give each
// application, and each test, its own prefix.
func WithPrefix(prefix string) Option {
	return optionFunc(func(s *Store) { s.prefix = prefix; s.prefixSet = true })
}

// WithWait makes every write wait until replicas replicas have acknowledged
// it (Redis WAIT), or timeout; a write acknowledged by fewer returns an error
// matching ErrNotReplicated. WAIT goes in the write's pipeline (no more
// round trips), but each write waits for the replicas' acknowledgements. It
// narrows (does not close: Redis replication is asynchronous) the window in
// which a Sentinel failover loses an acknowledged write. It needs a
// *redis.Client (standalone, or Sentinel's failover client): WAIT counts
// the acknowledgements of its own connection's writes, and a
// *redis.ClusterClient would send it to an arbitrary node, a *redis.Ring
// to a shard of its own choosing. It is refused too with a timeout not
// shorter than the client's ReadTimeout (5s by default), under which
// WAIT's reply is read: leave room for the round trip.
func WithWait(replicas int, timeout time.Duration) Option {
	return optionFunc(func(s *Store) { s.waitReplicas, s.waitTimeout = replicas, timeout })
}

// WithIdleResolution sets how long after this Store moved a session's idle
// deadline (by a Load or an Apply) it reads or writes that session without
// moving it again: DefaultIdleResolution, one second, by default, and never
// more than a tenth of the idle timeout. Within it a Load sends HGETALL
// alone instead of also PEXPIRE ... GT and PEXPIRETIME, and applyFastScript
// skips its two expiry calls, for the requests of a burst (a page and what
// it fetches). The idle deadline may then fall up to d short of the last
// request plus the idle timeout, and a Load's Record.IdleDeadline is the one
// this Store last read (a lower bound: other instances may have moved it
// on). Everything else is read every time: a destroyed, revoked or renewed
// session is seen at once. A Load or Apply with a longer idle timeout than
// the last move, or within the idle timeout plus a minute of the absolute
// deadline, always moves it. 0 moves the idle deadline every time.
func WithIdleResolution(d time.Duration) Option {
	return optionFunc(func(s *Store) { s.idleRes = d })
}

// Store is a session store on Redis: standalone, Sentinel or Cluster, through
// a redis.UniversalClient (not a *redis.Ring: see New). It is safe for concurrent use and starts no
// goroutine; closing the client is the caller's business.
//
// Each session is one hash, a field per key. Apply (with its compare-and-set
// and its refusal to resurrect) is a Lua script (applyFastScript for most
// writes on Redis 7 and later, applyScript for the rest); Load (with its idle
// refresh) is one pipeline of plain commands (see loadPlain); each is one
// round trip in the common case. Keys use hash tags so that a session, its user's index and its
// user's revocation epoch live in one Cluster slot:
//
//	<prefix>s:{<tag>}.<hash>   a session bound to a user (tag = session.UserTag)
//	<prefix>s:{<hash>}         an anonymous session
//	<prefix>e:{<tag>}          revocation epochs of the users with that tag
//	<prefix>u:{<tag>}<user>    the user's index (a set of session IDs)
type Store struct {
	c            redis.UniversalClient
	prefix       string
	prefixSet    bool
	waitReplicas int
	waitTimeout  time.Duration
	// idleRes and fresh: see WithIdleResolution and refreshed.
	idleRes time.Duration
	fresh   *refreshed
	// scriptLoad: the server (or one Cluster node) answered that it lacks
	// the Redis 7 commands Load uses, or applyFastScript answered that it
	// predates Redis 7.0; Load runs the load script and Apply only
	// applyScript from then on.
	scriptLoad atomic.Bool
}

// New returns a store over c. It refuses a Cluster client that reads from
// replicas (ClusterOptions or UniversalOptions with ReadOnly,
// RouteByLatency or RouteRandomly, and Sentinel's failover Cluster client
// with them): a session must be read where it was last written. Give the
// store its own client if the rest of the service reads from replicas. It
// refuses a *redis.Ring, which sends the keys of a shard it finds down to
// the other shards: the sessions there would read as ended, and the
// Manager would issue fresh ones instead of failing closed, and lose
// logouts, which would delete nothing (the sessions back when the shard
// is).
func New(c redis.UniversalClient, opts ...Option) (*Store, error) {
	if c == nil {
		return nil, errors.New("redisstore: nil client")
	}
	s := &Store{c: c, idleRes: DefaultIdleResolution}
	for _, o := range opts {
		if o == nil {
			return nil, errors.New("redisstore: nil option")
		}
		o.apply(s)
	}
	if !s.prefixSet {
		s.prefix = DefaultPrefix
	}
	if strings.ContainsAny(s.prefix, "{}") {
		return nil, fmt.Errorf("redisstore: prefix %q contains a brace", s.prefix)
	}
	if s.waitReplicas < 0 || (s.waitReplicas > 0 && s.waitTimeout <= 0) {
		return nil, fmt.Errorf("redisstore: WithWait(%d, %v): want replicas >= 0 and a positive timeout", s.waitReplicas, s.waitTimeout)
	}
	if s.idleRes < 0 {
		return nil, fmt.Errorf("redisstore: WithIdleResolution(%v): want a duration >= 0", s.idleRes)
	}
	s.fresh = newRefreshed()
	if _, ok := c.(*redis.Ring); ok {
		// A Ring takes a shard it finds down out of its hash ring and sends
		// its keys to the others, where its sessions read as not found.
		return nil, errors.New("redisstore: a *redis.Ring moves a failed shard's sessions to other shards, where they read as ended " +
			"(a fresh session instead of a failure, a logout that deletes nothing): use a Cluster, Sentinel or standalone client")
	}
	if _, ok := c.(*redis.Client); !ok && s.waitReplicas > 0 {
		// WAIT counts the acknowledgements of its own connection's writes:
		// a Cluster client sends it to an arbitrary node, a Ring to the
		// shard its name hashes to, on another connection, concurrently.
		return nil, fmt.Errorf("redisstore: WithWait needs a *redis.Client (standalone or Sentinel), not a %T", c)
	}
	if rc, ok := c.(*redis.Client); ok && s.waitReplicas > 0 {
		// WAIT's reply is read with the write's, under the client's read
		// timeout (positive once the client has applied its defaults; 0
		// or less: no deadline): a WAIT that outlasts it fails the write
		// with an i/o timeout instead of ErrNotReplicated.
		if rt := rc.Options().ReadTimeout; rt > 0 && s.waitTimeout >= rt {
			return nil, fmt.Errorf("redisstore: WithWait timeout %v: want it shorter than the client's ReadTimeout %v", s.waitTimeout, rt)
		}
	}
	if cc, ok := c.(*redis.ClusterClient); ok {
		// go-redis sends a read-only command, or a pipeline of them, to a
		// replica when one of these is set: a Load alone there (within the
		// idle resolution, or with no idle timeout) could miss the
		// instance's last write, a Destroy or a log-out everywhere for as
		// long as replication lags.
		if o := cc.Options(); o.ReadOnly || o.RouteByLatency || o.RouteRandomly {
			return nil, errors.New("redisstore: the Cluster client reads from replicas (ReadOnly, RouteByLatency or RouteRandomly): " +
				"a session read there may miss the last write or a logout; give the store a client that reads from primaries")
		}
	}
	return s, nil
}

func validID(id string) bool {
	if id == "" || len(id) > 128 {
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

func (s *Store) sessionKey(id string) string {
	tag, rest := session.HashTag(id), ""
	if len(tag) < len(id) {
		rest = id[len(tag):]
	}
	return s.prefix + "s:{" + tag + "}" + rest
}

func (s *Store) epochKey(tag string) string { return s.prefix + "e:{" + tag + "}" }

func (s *Store) indexKey(tag, user string) string { return s.prefix + "u:{" + tag + "}" + user }

// legacyGrace bounds an alias written before aliases carried their grace
// deadline (field _g): Load cannot tell how long such an alias had left, so
// the first Load that moves its expiry gives it legacyGrace from then on
// (session.DefaultRenewGrace), once: the deadline is stored in the alias.
const legacyGrace = session.DefaultRenewGrace

// errOldServer: the server lacks PEXPIRE ... GT/LT or PEXPIRETIME (Redis
// before 7.0); Load falls back to the load script.
var errOldServer = errors.New("redisstore: server before Redis 7.0")

// Load implements session.Store: one round trip of plain commands (see
// loadPlain); two while following an alias left by a rotation, or during the
// last idle period before the absolute deadline, when a refresh must be
// capped. On a server before Redis 7.0 it runs the load script instead.
func (s *Store) Load(ctx context.Context, id string, idle time.Duration) (session.Record, bool, error) {
	if err := ctx.Err(); err != nil {
		return session.Record{}, false, err
	}
	if !s.scriptLoad.Load() {
		rec, found, err := s.loadPlain(ctx, id, idle)
		if !errors.Is(err, errOldServer) {
			return rec, found, err
		}
		s.scriptLoad.Store(true)
	}
	return s.loadScripted(ctx, id, idle)
}

// aliasFix is an alias that a Load followed after moving its expiry past its
// grace deadline g (a plain PEXPIRE ... GT cannot tell an alias from a
// record): the next trip puts the expiry back (PEXPIREAT key g LT, which
// deletes the key if g has passed) and checks that the key is still there,
// that is, that the alias had not ended. setG: the alias predates _g, which
// the next trip stores (HSETNX) first; should the alias have been deleted
// meanwhile, that leaves a hash holding only _g, which is no record (Load and
// the scripts find neither _a nor _to) and expires at g like the alias.
type aliasFix struct {
	key  string
	g    int64
	setG bool
}

// loadTrip is the pipeline of one hop of loadPlain.
type loadTrip struct {
	fixed   *redis.IntCmd             // EXISTS of the alias fixed (nil: none)
	refresh *redis.IntCmd             // PEXPIRE key idle GT (nil: idle 0)
	hash    *redis.MapStringStringCmd // HGETALL key
	expiry  *redis.IntCmd             // PEXPIRETIME key (nil: skipped, see WithIdleResolution)
	epochs  *redis.MapStringStringCmd // HGETALL of the epochs (nil: anonymous ID)
	cmds    [3]*redis.IntCmd          // the fix's other commands, for their errors
}

// loadPlain reads a record with plain commands, pipelined in one round trip
// to one Cluster slot (every key shares the ID's hash tag; only the alias that
// a hop puts back, see aliasFix, may be in another slot, which the Cluster
// client sends to its own node in the same round trip):
//
//	PEXPIRE s <idle> GT      move the idle deadline, on Redis's clock, never back
//	HGETALL s                the record (or an alias)
//	PEXPIRETIME s            the idle deadline now
//	HGETALL e:{tag}          for a user's ID: the revocation epochs of its tag
//
// The checks the load script made run here, in Go. No clock is needed: a key
// that exists is not past its expiry, so a record whose expiry (read after
// the hash) is at most its absolute deadline _a was live when read. A
// refresh in the last idle period takes the expiry past _a; a second trip
// caps it (PEXPIREAT s _a LT, which deletes the key if _a has passed) and
// checks that the key is still there. An alias is live while its key exists
// and its expiry is at most its grace deadline _g; the refresh takes it past
// _g, so the trip that reads the target also puts the alias's expiry back
// and checks it (see aliasFix). A record whose user's epoch moved was
// revoked: it is deleted (one more trip, once) and not returned.
func (s *Store) loadPlain(ctx context.Context, id string, idle time.Duration) (session.Record, bool, error) {
	ms := idle.Milliseconds()
	var fix aliasFix
	reread := false // a hop read again in full: see the skip path below
	for hop := 0; hop < maxHops; hop++ {
		if !validID(id) {
			return session.Record{}, false, nil
		}
		key, tag := s.sessionKey(id), session.HashTag(id)
		tagged := len(tag) < len(id)
		// skip: this Store moved the idle deadline less than its resolution
		// ago (see WithIdleResolution); the trip reads the hash alone.
		var cached int64
		skip := false
		if ms > 0 && fix.key == "" {
			cached, skip = s.fresh.fresh(key, ms)
		}
		var t loadTrip
		var sent time.Time // when the refresh was sent: the resolution runs from then
		if skip && !tagged {
			t.hash = s.c.HGetAll(ctx, key)
		} else {
			sent = time.Now()
			pipe := s.c.Pipeline()
			if fix.key != "" {
				if fix.setG {
					t.cmds[0] = redis.NewIntCmd(ctx, "hsetnx", fix.key, "_g", fix.g)
					_ = pipe.Process(ctx, t.cmds[0])
				}
				t.cmds[1] = redis.NewIntCmd(ctx, "pexpireat", fix.key, fix.g, "lt")
				_ = pipe.Process(ctx, t.cmds[1])
				t.fixed = pipe.Exists(ctx, fix.key)
			}
			var k any = key // boxed once for the three commands
			if ms > 0 && !skip {
				t.refresh = redis.NewIntCmd(ctx, "pexpire", k, ms, "gt")
				_ = pipe.Process(ctx, t.refresh)
			}
			t.hash = redis.NewMapStringStringCmd(ctx, "hgetall", k)
			_ = pipe.Process(ctx, t.hash)
			if !skip {
				t.expiry = redis.NewIntCmd(ctx, "pexpiretime", k)
				_ = pipe.Process(ctx, t.expiry)
			}
			if tagged {
				t.epochs = pipe.HGetAll(ctx, s.epochKey(tag))
			}
			_, _ = pipe.Exec(ctx)
		}
		if err := t.err(); err != nil {
			return session.Record{}, false, err
		}
		if t.fixed != nil && t.fixed.Val() == 0 {
			return session.Record{}, false, nil // the alias followed had ended
		}
		h := t.hash.Val()
		if skip {
			if len(h) == 0 {
				s.fresh.forget(key)
				return session.Record{}, false, nil
			}
			if _, ok := h["_to"]; ok {
				// Renewed since: only a trip with PEXPIRETIME can tell
				// whether the alias is still within its grace period.
				// Once: the entry is gone, so the next trip is a full one.
				s.fresh.forget(key)
				if !reread {
					reread = true
					hop--
				}
				continue
			}
		}
		expiry := int64(-1)
		if t.expiry != nil {
			expiry = t.expiry.Val()
		}
		if len(h) == 0 || expiry == -2 {
			return session.Record{}, false, nil
		}
		if to, ok := h["_to"]; ok {
			fix = aliasFix{}
			if g, err := strconv.ParseInt(h["_g"], 10, 64); err == nil {
				if expiry < 0 || expiry > g {
					fix = aliasFix{key: key, g: g}
				}
			} else if ms > 0 && expiry > 0 {
				fix = aliasFix{key: key, g: expiry - ms + legacyGrace.Milliseconds(), setG: true}
			}
			id = to
			continue
		}
		rec, err := decode(id, h)
		if err != nil {
			return session.Record{}, false, err
		}
		if rec.AbsoluteDeadline.IsZero() {
			return session.Record{}, false, nil // no record: not one this store wrote
		}
		if rec.User != "" {
			revoked, err := s.revoked(ctx, tag, rec.User, h["_e"], t.epochs)
			if err != nil {
				return session.Record{}, false, err
			}
			if revoked {
				s.fresh.forget(key)
				_ = s.c.Del(ctx, key).Err() // it is not returned either way
				return session.Record{}, false, nil
			}
		}
		if skip {
			// The refresh that made the entry left the expiry at most at
			// the absolute deadline, more than a minute away: the key's
			// existence shows the record live.
			rec.IdleDeadline = time.UnixMilli(cached)
			return rec, true, nil
		}
		abs := rec.AbsoluteDeadline.UnixMilli()
		if expiry < 0 || expiry > abs {
			live, err := s.capExpiry(ctx, key, abs)
			if err != nil || !live {
				return session.Record{}, false, err
			}
			expiry = abs
		}
		if t.refresh != nil {
			s.fresh.store(key, ms, expiry, abs, remaining(s.idleRes, idle, sent))
		}
		rec.IdleDeadline = time.UnixMilli(expiry)
		return rec, true, nil
	}
	return session.Record{}, false, nil
}

// err returns the first error of the trip: errOldServer when the server does
// not know the Redis 7 commands and options.
func (t *loadTrip) err() error {
	errs := [...]error{t.hash.Err(), intErr(t.cmds[0]), intErr(t.cmds[1]), intErr(t.fixed), intErr(t.refresh), intErr(t.expiry), nil}
	if t.epochs != nil {
		errs[len(errs)-1] = t.epochs.Err()
	}
	for _, err := range errs {
		if err != nil {
			if oldServer(err) {
				return errOldServer
			}
			return fmt.Errorf("redisstore: load: %w", err)
		}
	}
	return nil
}

func intErr(c *redis.IntCmd) error {
	if c == nil {
		return nil
	}
	return c.Err()
}

// oldServer reports whether err is a server's answer to a command or option
// it does not know (PEXPIRETIME, PEXPIRE ... GT before Redis 7.0).
func oldServer(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return false
	}
	msg := strings.ToLower(rerr.Error())
	return strings.HasPrefix(msg, "err unknown command") || strings.HasPrefix(msg, "err wrong number of arguments")
}

// revoked reports whether the epoch e recorded for user differs from the
// user's current one: from epochs when the trip read them, else read now.
func (s *Store) revoked(ctx context.Context, tag, user, e string, epochs *redis.MapStringStringCmd) (bool, error) {
	var cur string
	if epochs != nil {
		cur = epochs.Val()[user]
	} else {
		// Not a user's ID, yet bound to a user: no Apply makes such a record.
		v, err := s.c.HGet(ctx, s.epochKey(tag), user).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return false, fmt.Errorf("redisstore: load: %w", err)
		}
		cur = v
	}
	if cur == "" {
		cur = "0"
	}
	return cur != e, nil
}

// capExpiry puts the expiry of key back to the absolute deadline abs (ms)
// after a refresh took it past, and reports whether the key is still there:
// PEXPIREAT to a time that has passed deletes it.
func (s *Store) capExpiry(ctx context.Context, key string, abs int64) (bool, error) {
	pipe := s.c.Pipeline()
	cmd := redis.NewIntCmd(ctx, "pexpireat", key, abs, "lt")
	_ = pipe.Process(ctx, cmd)
	exists := pipe.Exists(ctx, key)
	_, _ = pipe.Exec(ctx)
	if err := cmp.Or(cmd.Err(), exists.Err()); err != nil {
		return false, fmt.Errorf("redisstore: load: %w", err)
	}
	return exists.Val() == 1, nil
}

// loadScripted is Load on a server before Redis 7.0: one round trip (two
// while following an alias), the load script, which checks the record and
// moves its idle deadline, pipelined with an HGETALL of the hash.
func (s *Store) loadScripted(ctx context.Context, id string, idle time.Duration) (session.Record, bool, error) {
	keys := make([]string, 2)
	args := []any{idle.Milliseconds()}
	for range maxHops {
		if !validID(id) {
			return session.Record{}, false, nil
		}
		keys[0], keys[1] = s.sessionKey(id), s.epochKey(session.HashTag(id))
		script, hash, err := s.load(ctx, keys, args)
		if errors.Is(err, redis.Nil) {
			return session.Record{}, false, nil
		}
		if err != nil {
			return session.Record{}, false, fmt.Errorf("redisstore: load: %w", err)
		}
		switch v := script.(type) {
		case string: // an alias
			id = v
			continue
		case int64:
			// The hash was read just after the script; a write that came in
			// between is simply a later state, but the record may have been
			// deleted or turned into an alias meanwhile.
			if len(hash) == 0 {
				return session.Record{}, false, nil
			}
			if to, ok := hash["_to"]; ok {
				id = to
				continue
			}
			rec, err := decode(id, hash)
			if err != nil {
				return session.Record{}, false, err
			}
			rec.IdleDeadline = time.UnixMilli(v)
			return rec, true, nil
		default:
			return session.Record{}, false, fmt.Errorf("redisstore: load: unexpected reply %v", script)
		}
	}
	return session.Record{}, false, nil
}

// load runs the load script and HGETALL of keys[0] in one pipeline, and
// again with EVAL when the server does not know the script yet.
func (s *Store) load(ctx context.Context, keys []string, args []any) (any, map[string]string, error) {
	run := func(eval func(redis.Pipeliner) *redis.Cmd) (*redis.Cmd, *redis.MapStringStringCmd) {
		pipe := s.c.Pipeline()
		cmd := eval(pipe)
		hash := pipe.HGetAll(ctx, keys[0])
		_, _ = pipe.Exec(ctx)
		return cmd, hash
	}
	cmd, hash := run(func(p redis.Pipeliner) *redis.Cmd { return loadScript.EvalSha(ctx, p, keys, args...) })
	if err := cmd.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		cmd, hash = run(func(p redis.Pipeliner) *redis.Cmd { return loadScript.Eval(ctx, p, keys, args...) })
	}
	if err := cmd.Err(); err != nil {
		return nil, nil, err
	}
	h, err := hash.Result()
	if err != nil {
		return nil, nil, err
	}
	return cmd.Val(), h, nil
}

// decode turns an HGETALL reply into a record. The values' data share one
// allocation (each slice capped, so that appending to one cannot overwrite
// the next).
func decode(id string, h map[string]string) (session.Record, error) {
	keys, size := 0, 0
	for f, v := range h {
		if strings.HasPrefix(f, "k:") {
			keys++
			size += len(v)
		}
	}
	buf := make([]byte, 0, size)
	rec := session.Record{ID: id, Values: make(map[string]session.Value, keys)}
	bad := func(field string) (session.Record, error) {
		return session.Record{}, fmt.Errorf("redisstore: load %s: malformed field %q", id, field)
	}
	for f, v := range h {
		if len(f) < 2 {
			continue
		}
		switch f[:2] {
		case "k:":
			i := strings.IndexByte(v, ':')
			if i <= 0 {
				return bad(f)
			}
			n, err := strconv.ParseUint(v[:i], 10, 64)
			if err != nil {
				return bad(f)
			}
			start := len(buf)
			buf = append(buf, v[i+1:]...)
			rec.Values[f[2:]] = session.Value{Data: buf[start:len(buf):len(buf)], Version: n}
		case "_v":
			if len(f) != 2 {
				continue
			}
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return bad(f)
			}
			rec.Version = n
		case "_c", "_a":
			if len(f) != 2 {
				continue
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return bad(f)
			}
			if f == "_c" {
				rec.Created = time.UnixMilli(n)
			} else {
				rec.AbsoluteDeadline = time.UnixMilli(n)
			}
		case "_u":
			if len(f) == 2 {
				rec.User = v
			}
		}
	}
	return rec, nil
}

// EnforcesMaxSize implements session.SizeLimiter: Apply keeps the total
// size of each record's values in the hash and refuses a delta that takes it
// past Delta.MaxSize, in the same script.
func (s *Store) EnforcesMaxSize() bool { return true }

// Apply implements session.Store: one round trip for a live record (WAIT,
// with WithWait, goes in the same pipeline). On Redis 7 and later a delta
// without Create or User, naming at most 255 keys (fastMaxKeys), runs
// applyFastScript, and applyScript in a second trip only for what that
// leaves (an alias, a record without _s): three round trips through an
// alias (the alias's two, then the target's). Any other delta runs
// applyScript alone: two round trips through an alias.
func (s *Store) Apply(ctx context.Context, id string, d session.Delta) (uint64, error) {
	if err := d.Validate(); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	ms := d.Idle.Milliseconds()
	fast := d.Create == nil && d.User == "" && len(d.Set)+len(d.Delete)+len(d.Expect) <= fastMaxKeys
	a := applyArgs{d: &d}
	if fast {
		a.fast = fastArgs(d, ms)
	}
	keys := make([]string, 3)
	for range maxHops {
		if !validID(id) {
			return 0, ErrInvalidID
		}
		tag := session.HashTag(id)
		keys[0], keys[1] = s.sessionKey(id), s.epochKey(tag)
		keys[2] = keys[0]
		if d.User != "" {
			if tag != session.UserTag(d.User) {
				return 0, ErrUserTag
			}
			keys[2] = s.indexKey(tag, d.User)
		}
		// Within the resolution of this Store's last move of the idle
		// deadline, applyFastScript leaves the expiry alone unless the
		// absolute deadline is near (see refreshed.store). Such an Apply
		// moved nothing: it starts no resolution of its own (see wrote).
		skipping := false
		sent := time.Now()
		if fast {
			a.fast[1] = int64(0)
			if ms > 0 && s.fresh.moved(keys[0], ms) {
				a.fast[1] = sent.UnixMilli() + ms + absMargin.Milliseconds()
				skipping = true
			}
		}
		res, werr, err := s.applyHop(ctx, keys, &a, id)
		if err != nil {
			return 0, fmt.Errorf("redisstore: apply: %w", err)
		}
		status, _ := res[0].(string)
		switch {
		case status == "ok" && len(res) == 2:
			if ms > 0 && d.Create == nil && !skipping {
				s.fresh.wrote(keys[0], ms, remaining(s.idleRes, d.Idle, sent))
			}
			v, _ := res[1].(int64)
			return uint64(v), werr
		case status == "notfound":
			return 0, session.ErrNotFound
		case status == "conflict" && len(res) == 2:
			k, _ := res[1].(string)
			return 0, &session.ConflictError{Key: k}
		case status == "toolarge" && len(res) == 2:
			n, _ := res[1].(int64)
			return 0, &session.SizeError{Size: int(n), Limit: d.MaxSize, Session: true}
		case status == "alias" && len(res) == 2 && d.Create == nil:
			id, _ = res[1].(string)
		default:
			return 0, fmt.Errorf("redisstore: apply: unexpected reply %v", res)
		}
	}
	return 0, session.ErrNotFound
}

// fastMaxKeys bounds the keys a delta names for applyFastScript, which reads
// and writes them without chunks (applyScript has them) and takes each count
// as one byte.
const fastMaxKeys = 255

// fastArgs returns applyFastScript's arguments for d, the skip argument 0.
func fastArgs(d session.Delta, idleMs int64) []any {
	nset, ndel, nexp := len(d.Set), len(d.Delete), len(d.Expect)
	n := nset + ndel + nexp
	a := make([]any, 4+n+nset+nexp)
	a[0], a[1], a[2], a[3] = idleMs, int64(0), max(d.MaxSize, 0), string([]byte{byte(nset), byte(ndel), byte(nexp)})
	i := 0
	for k, v := range d.Set {
		a[4+i], a[4+n+i] = "k:"+k, v
		i++
	}
	for j, k := range d.Delete {
		a[4+nset+j] = "k:" + k
	}
	i = 0
	for k, v := range d.Expect {
		a[4+nset+ndel+i], a[4+n+nset+i] = "k:"+k, strconv.FormatUint(v, 10)
		i++
	}
	return a
}

// applyArgs holds the arguments of an Apply's scripts: applyFastScript's
// (see there) when it can take the delta, built first; applyScript's only
// when they are needed.
type applyArgs struct {
	d          *session.Delta
	fast, slow []any
}

// slowFor returns applyScript's arguments for the record id.
func (a *applyArgs) slowFor(id string) []any {
	if a.slow == nil {
		d := a.d
		args := make([]any, 0, 11+2*len(d.Set)+len(d.Delete)+2*len(d.Expect))
		args = append(args, "", "0", int64(0), int64(0), int64(0), d.Idle.Milliseconds(), d.User, len(d.Set), len(d.Delete), len(d.Expect), d.MaxSize)
		if c := d.Create; c != nil {
			args[1], args[2] = "1", c.Absolute.Milliseconds()
			if !c.Deadline.IsZero() {
				args[3], args[4] = c.Deadline.UnixMilli(), c.Created.UnixMilli()
			}
		}
		for k, v := range d.Set {
			args = append(args, k, v)
		}
		for _, k := range d.Delete {
			args = append(args, k)
		}
		for k, v := range d.Expect {
			args = append(args, k, strconv.FormatUint(v, 10))
		}
		a.slow = args
	}
	a.slow[0] = id
	return a.slow
}

// applyHop runs the apply script once on the record id: applyFastScript
// first when a has its arguments and the server is not known to predate
// Redis 7.0, then applyScript if that answers that it did nothing
// ({'slow'}, or {'old'}, which also switches Load to the load script). It
// returns the reply, the write's replica shortfall (WithWait) and its error.
func (s *Store) applyHop(ctx context.Context, keys []string, a *applyArgs, id string) ([]any, error, error) {
	if a.fast != nil && !s.scriptLoad.Load() {
		cmd, werr := s.write(ctx, applyFastScript, keys[:2], a.fast...)
		reply, err := cmd.Result()
		if err != nil {
			return nil, nil, err
		}
		if v, ok := reply.(int64); ok {
			return []any{"ok", v}, werr, nil
		}
		res, _ := reply.([]any)
		if len(res) == 0 {
			return nil, nil, fmt.Errorf("unexpected reply %v", reply)
		}
		switch status, _ := res[0].(string); status {
		case "old":
			s.scriptLoad.Store(true)
		case "slow":
		default:
			return res, werr, nil
		}
	}
	cmd, werr := s.write(ctx, applyScript, keys, a.slowFor(id)...)
	res, err := cmd.Slice()
	if err == nil && len(res) == 0 {
		err = errors.New("empty reply")
	}
	return res, werr, err
}

// Delete implements session.Store: one round trip for a record; through
// an alias, the alias's trip, the target's, then one more to delete the
// alias. The target goes first, so that a Delete that ends half-way (its
// context cancelled, a failure) leaves the alias leading to a deleted
// target, which a second Delete of the same ID finishes; never the alias
// gone and the renewed session alive under an ID the caller does not know.
func (s *Store) Delete(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// A replica shortfall (WithWait) on one trip is reported at the end: the
	// rest of the chain is deleted all the same.
	var werrs error
	var aliases [maxHops]string
	n := 0
	for range maxHops {
		if !validID(id) {
			break
		}
		key := s.sessionKey(id)
		s.fresh.forget(key)
		cmd, werr := s.write(ctx, deleteScript, []string{key}, "0")
		to, err := cmd.Text()
		if err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("redisstore: delete: %w", err)
		}
		werrs = cmp.Or(werrs, werr)
		if err != nil { // deleted: not a live alias
			break
		}
		aliases[n] = key
		n++
		id = to
	}
	for i := n - 1; i >= 0; i-- {
		cmd, werr := s.write(ctx, deleteScript, []string{aliases[i]}, "1")
		if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("redisstore: delete: %w", err)
		}
		werrs = cmp.Or(werrs, werr)
	}
	return werrs
}

// Alias implements session.Aliaser. The grace period is rounded up to a
// millisecond.
func (s *Store) Alias(ctx context.Context, oldID, newID string, ifVersion uint64, grace time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !validID(oldID) || !validID(newID) {
		return ErrInvalidID
	}
	ms := max(grace.Milliseconds(), 1)
	cmd, werr := s.write(ctx, aliasScript, []string{s.sessionKey(oldID), s.epochKey(session.HashTag(oldID))},
		newID, strconv.FormatUint(ifVersion, 10), ms)
	res, err := cmd.Text()
	if err != nil {
		return fmt.Errorf("redisstore: alias: %w", err)
	}
	switch res {
	case "ok":
		return werr
	case "notfound":
		return session.ErrNotFound
	case "conflict":
		return &session.ConflictError{}
	}
	return fmt.Errorf("redisstore: alias: unexpected reply %q", res)
}

// Sessions implements session.UserIndex: two round trips (the index, then
// one script over the indexed sessions that drops the dead ones).
func (s *Store) Sessions(ctx context.Context, user string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	keys, ids, err := s.members(ctx, user)
	if err != nil || len(ids) == 0 {
		return nil, err
	}
	args := make([]any, 0, 1+len(ids))
	args = append(args, user)
	for _, id := range ids {
		args = append(args, id)
	}
	live, err := sessionsScript.Run(ctx, s.c, keys, args...).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("redisstore: sessions: %w", err)
	}
	return live, nil
}

// DestroyUser implements session.UserIndex: two round trips. The user's
// epoch is bumped in the same script that deletes the indexed sessions, so a
// session bound concurrently with the listing is revoked all the same.
func (s *Store) DestroyUser(ctx context.Context, user string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	keys, _, err := s.members(ctx, user)
	if err != nil {
		return err
	}
	cmd, werr := s.write(ctx, destroyUserScript, keys, user)
	if err := cmd.Err(); err != nil {
		return fmt.Errorf("redisstore: destroy user: %w", err)
	}
	return werr
}

// members reads the user's index and returns the script keys (index,
// epochs, then one session key per member) and the member IDs.
func (s *Store) members(ctx context.Context, user string) ([]string, []string, error) {
	tag := session.UserTag(user)
	index := s.indexKey(tag, user)
	all, err := s.c.SMembers(ctx, index).Result()
	if err != nil {
		return nil, nil, fmt.Errorf("redisstore: user index: %w", err)
	}
	keys := []string{index, s.epochKey(tag)}
	ids := all[:0]
	for _, id := range all {
		if validID(id) && session.HashTag(id) == tag {
			keys = append(keys, s.sessionKey(id))
			ids = append(ids, id)
		}
	}
	return keys, ids, nil
}

// write runs a script that writes. With WithWait it sends the script and
// WAIT in one pipeline, so that WAIT runs on the connection that wrote
// (WAIT counts the acknowledgements of its own connection's writes) and the
// pair costs one round trip.
func (s *Store) write(ctx context.Context, script *redis.Script, keys []string, args ...any) (*redis.Cmd, error) {
	if s.waitReplicas == 0 {
		// script.Run, without its allocation when there is no error.
		cmd := script.EvalSha(ctx, redisonce.Scripter{C: s.c}, keys, args...)
		if err := cmd.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			cmd = script.Eval(ctx, redisonce.Scripter{C: s.c}, keys, args...)
		}
		return cmd, nil
	}
	send := func(eval func(redis.Pipeliner) *redis.Cmd) (*redis.Cmd, *redis.Cmd) {
		pipe := s.c.Pipeline()
		cmd := eval(pipe)
		wait := pipe.Do(ctx, "WAIT", s.waitReplicas, s.waitTimeout.Milliseconds())
		_, _ = pipe.Exec(ctx)
		return cmd, wait
	}
	cmd, wait := send(func(p redis.Pipeliner) *redis.Cmd {
		return script.EvalSha(ctx, redisonce.Scripter{C: p}, keys, args...)
	})
	if err := cmd.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		cmd, wait = send(func(p redis.Pipeliner) *redis.Cmd { return script.Eval(ctx, redisonce.Scripter{C: p}, keys, args...) })
	}
	if cmd.Err() != nil {
		return cmd, nil
	}
	n, err := wait.Int64()
	if err != nil {
		return cmd, fmt.Errorf("redisstore: wait: %w", err)
	}
	if int(n) < s.waitReplicas {
		return cmd, &NotReplicatedError{Acked: int(n), Wanted: s.waitReplicas}
	}
	return cmd, nil
}
