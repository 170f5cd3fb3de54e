package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/activekit/activekit/retry"
)

// Errors of a Session.
var (
	// ErrNoSession: the context holds no session (the handler is not behind
	// Manager.Middleware).
	ErrNoSession = errors.New("session: no session in context")
	// ErrTooLarge: a value or the whole session is over its limit (see
	// WithLimits). It wraps a *SizeError.
	ErrTooLarge = errors.New("session: too large")
	// ErrSaved: a change came after the session was saved with the
	// response headers (or the handler returned); it is not made.
	ErrSaved = errors.New("session: already saved with the response headers")
)

// SizeError says which limit a Put broke.
type SizeError struct {
	Key     string // "" when a store refused the session as a whole
	Size    int    // the value's size, or the session's with it
	Limit   int    // the limit broken
	Session bool   // the session limit rather than the value limit
}

func (e *SizeError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("session: session is %d bytes, limit %d", e.Size, e.Limit)
	}
	what := "value"
	if e.Session {
		what = "session with value"
	}
	return fmt.Sprintf("session: %s %q is %d bytes, limit %d", what, e.Key, e.Size, e.Limit)
}

// Unwrap returns ErrTooLarge.
func (e *SizeError) Unwrap() error { return ErrTooLarge }

// Session is one request's view of a user's session. It is loaded from the
// store the first time it is used, and its changes are saved once, before
// the response headers go out. A change after that (Put, Delete, SetUser,
// Renew, Destroy, or an Update that would start a new session, whose
// cookie could no longer be sent) fails with ErrSaved and is not made; an
// Update of a session that exists writes to the store at once, and still
// works. Its methods are safe for concurrent use by the handler's
// goroutines; it must not be used after the handler returns.
//
// A Session keeps the request's context, as *http.Request does, and uses it
// for its store calls.
type Session struct {
	m   *Manager
	ctx context.Context

	mu      sync.Mutex
	token   string // token from the cookie, or issued by this request
	id      string // store ID of token
	issued  bool   // token is new: set the cookie
	loaded  bool
	loadErr error
	found   bool
	rec     Record
	set     map[string][]byte // pending, encoded but not sealed
	del     map[string]bool   // pending deletions
	renew   bool
	user    string // user to bind at save
	destroy bool
	// start: when the request came, if it carried a token; missedLate:
	// the token was last found leading nowhere late enough for lateMiss
	// (see missed).
	start      time.Time
	missedLate bool
	// cookies: the request's Cookie header, when it holds more than one
	// token under the cookie's name; token is the cand-th of them, and more
	// says whether another follows (see load).
	cookies []string
	cand    int
	more    bool
	saved   bool       // save attempted: later changes fail with ErrSaved
	aeads   *aeadCache // session keys derived in this request (nil until one is: see cache)
}

// Get returns the value of key decoded into a T: ok is false when the key is
// absent. An error means the store failed, or the value does not decode into
// a T (or does not decrypt).
func Get[T any](s *Session, key string) (value T, ok bool, err error) {
	raw, ok, err := s.raw(key)
	if err != nil || !ok {
		return value, false, err
	}
	if err := s.m.cfg.codec.Unmarshal(raw, &value); err != nil {
		var zero T
		return zero, false, fmt.Errorf("session: decode %q: %w", key, err)
	}
	return value, true, nil
}

func (s *Session) raw(key string) ([]byte, bool, error) {
	if s == nil {
		return nil, false, ErrNoSession
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// A key put or deleted in this request needs no read.
	if s.del[key] {
		return nil, false, nil
	}
	if v, ok := s.set[key]; ok {
		return v, true, nil
	}
	if err := s.load(); err != nil {
		return nil, false, err
	}
	v, ok := s.rec.Values[key]
	if !s.found || !ok || s.destroy {
		return nil, false, nil
	}
	plain, err := s.open(s.rec.ID, key, v.Data)
	if err != nil {
		return nil, false, fmt.Errorf("session: key %q: %w", key, err)
	}
	return plain, true, nil
}

// Put sets key to value, saved with the response. A new visitor's session is
// created then (except in a long request: see Manager.Middleware).
//
// A value over the value limit fails here. The session limit is checked here
// too when the session has been read in this request (by Get, Keys, User or
// Update); otherwise, with a store that enforces it itself (SizeLimiter, and
// no encryption), Put does not read the session, and a session over the
// limit fails the save instead: nothing is written and the error handler
// answers with an error matching ErrTooLarge.
func (s *Session) Put(key string, value any) error {
	if s == nil {
		return ErrNoSession
	}
	data, err := s.m.cfg.codec.Marshal(value)
	if err != nil {
		return fmt.Errorf("session: encode %q: %w", key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.saved {
		return ErrSaved
	}
	if !s.blind(s.m.blind) {
		if err := s.load(); err != nil {
			return err
		}
	}
	if err := s.checkSize(key, data); err != nil {
		return err
	}
	if s.set == nil {
		s.set = map[string][]byte{}
	}
	s.set[key] = data
	delete(s.del, key)
	return nil
}

// blind reports whether a change may be recorded without reading the
// session first: the session has not been read, the request has one, and
// the store can take the change as it is (ok). s.mu must be held.
func (s *Session) blind(ok bool) bool { return ok && !s.loaded && s.id != "" && !s.more }

// checkSize checks data against the value limit, and the session with data
// for key against the session limit (only the pending values when the
// session has not been read). s.mu must be held.
func (s *Session) checkSize(key string, data []byte) error {
	lim := s.m.cfg
	if len(data) > lim.maxValue {
		return &SizeError{Key: key, Size: len(data), Limit: lim.maxValue}
	}
	// Pending values count as they will be stored (sealed), like the
	// stored ones and like a store enforcing Delta.MaxSize.
	extra := s.m.sealExtra
	total := len(key) + len(data) + extra
	for k, v := range s.set {
		if k != key {
			total += len(k) + len(v) + extra
		}
	}
	if s.found && !s.destroy { // a destroyed session's values go with it
		for k, v := range s.rec.Values {
			if _, pending := s.set[k]; k != key && !pending && !s.del[k] {
				total += len(k) + len(v.Data)
			}
		}
	}
	if total > lim.maxSession {
		return &SizeError{Key: key, Size: total, Limit: lim.maxSession, Session: true}
	}
	return nil
}

// Delete removes key, saved with the response. Deleting a missing key is no
// error. It does not read the session.
func (s *Session) Delete(key string) error {
	if s == nil {
		return ErrNoSession
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.saved {
		return ErrSaved
	}
	if !s.blind(true) {
		if err := s.load(); err != nil {
			return err
		}
	}
	if s.del == nil {
		s.del = map[string]bool{}
	}
	s.del[key] = true
	delete(s.set, key)
	return nil
}

// Update changes key at once, by compare-and-set: it reads the key's current
// value from the store, calls fn with it (ok is false when absent), and
// writes fn's result only if no one changed the key meanwhile; otherwise it
// reads again and calls fn again, up to WithUpdateAttempts times. Use it for
// read-modify-write (a counter, a cart) that concurrent requests on other
// instances also perform: none of their updates is lost. An error from fn
// aborts without writing. A pending Put or Delete of key is dropped. A
// session that has ended is not resurrected: Update starts a new one, as a
// Put does, unless the request has run long enough for its token to have
// been renewed meanwhile (see Manager.Middleware), when it writes nothing and
// returns ErrNotFound, as it does when the session ends while it retries
// and after Destroy (Put a value to start a new session instead). The
// session is held while fn runs: fn must not call its methods (it would
// wait for itself forever).
func Update[T any](s *Session, key string, fn func(cur T, ok bool) (T, error)) error {
	if s == nil {
		return ErrNoSession
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.destroy {
		// The only session Update could write to is being destroyed.
		return fmt.Errorf("session: update after Destroy: %w", ErrNotFound)
	}
	if err := s.load(); err != nil {
		return err
	}
	m := s.m
	delete(s.set, key)
	delete(s.del, key)
	if !s.found {
		if s.saved {
			// A new session's cookie could no longer be sent.
			return ErrSaved
		}
		if s.lateMiss() {
			// Maybe renewed by another request while this one ran: a new
			// session's cookie would replace the renewed token (see
			// lateMiss), as a Put's would.
			return ErrNotFound
		}
		if err := s.create(nil); err != nil {
			return err
		}
	}
	var bo *retry.Backoff
	for range m.cfg.updateAttempts {
		var cur T
		old, ok := s.rec.Values[key]
		if ok {
			plain, err := s.open(s.rec.ID, key, old.Data)
			if err != nil {
				return fmt.Errorf("session: key %q: %w", key, err)
			}
			if err := m.cfg.codec.Unmarshal(plain, &cur); err != nil {
				return fmt.Errorf("session: decode %q: %w", key, err)
			}
		}
		next, err := fn(cur, ok)
		if err != nil {
			return err
		}
		data, err := m.cfg.codec.Marshal(next)
		if err != nil {
			return fmt.Errorf("session: encode %q: %w", key, err)
		}
		if err := s.checkSize(key, data); err != nil {
			return err
		}
		sealed, err := s.seal(s.rec.ID, key, data)
		if err != nil {
			return err
		}
		ver, err := s.apply(s.rec.ID, Delta{Set: map[string][]byte{key: sealed}, Expect: map[string]uint64{key: old.Version}, Idle: m.cfg.idle, MaxSize: m.maxSize()})
		switch {
		case err == nil:
			if s.rec.Values == nil { // a store may give an empty record nil Values
				s.rec.Values = map[string]Value{}
			}
			s.rec.Values[key] = Value{Data: sealed, Version: ver}
			s.rec.Version = ver
			return nil
		case errors.Is(err, ErrConflict):
			// Back off before reading again (full jitter, 1 ms doubling
			// to 64 ms), so that requests racing on one key from many
			// instances spread out instead of colliding again in
			// lockstep until one of them runs out of attempts.
			if bo == nil {
				bo = conflictBackoff()
			}
			if err := sleepCtx(s.ctx, bo.NextBackOff()); err != nil {
				return err
			}
			if err := s.reload(); err != nil {
				return err
			}
			if !s.found {
				return ErrNotFound
			}
		default:
			return err
		}
	}
	return &ConflictError{Key: key}
}

// conflictBackoff spaces Update's attempts after a conflict.
func conflictBackoff() *retry.Backoff {
	b, _ := retry.NewBackoff(retry.Policy{
		InitialInterval: time.Millisecond,
		Multiplier:      2,
		MaxInterval:     64 * time.Millisecond,
		MaxAttempts:     -1, // Update counts its own attempts
		MaxElapsedTime:  -1,
	}, nil)
	return b
}

// sleepCtx waits d, or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Keys returns the session's keys, in no particular order.
func (s *Session) Keys() ([]string, error) {
	if s == nil {
		return nil, ErrNoSession
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.load(); err != nil {
		return nil, err
	}
	var keys []string
	if s.found && !s.destroy {
		for k := range s.rec.Values {
			if _, pending := s.set[k]; !pending && !s.del[k] {
				keys = append(keys, k)
			}
		}
	}
	for k := range s.set {
		keys = append(keys, k)
	}
	return keys, nil
}

// User returns the user the session is bound to (by SetUser, now or
// earlier), or "".
func (s *Session) User() (string, error) {
	if s == nil {
		return "", ErrNoSession
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.load(); err != nil {
		return "", err
	}
	if s.user != "" {
		return s.user, nil
	}
	if s.found && !s.destroy {
		return s.rec.User, nil
	}
	return "", nil
}

// SetUser binds the session to user (at login) and renews its token, as a
// login must: see Renew. The session then appears in the user's index and
// ends with Manager.DestroyUser(user).
func (s *Session) SetUser(user string) error {
	if s == nil {
		return ErrNoSession
	}
	if user == "" {
		return errors.New("session: empty user")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.saved {
		return ErrSaved
	}
	s.user, s.renew = user, true
	return nil
}

// Renew gives the session a new token when the response is saved, keeping
// its values. Call it whenever privileges change (login, logout to a lower
// level): a token an attacker planted before (session fixation) is then
// worthless. The old token keeps resolving to the session for the grace
// period (WithRenewGrace), for requests already in flight. A renewal is not
// made in a request that hijacks its connection before writing its
// response headers (see Manager.Middleware).
//
// When requests of one session renew it at once, on any instances, one of
// them issues the new token; the others, and any request that renews
// through the old token during the grace period, save their changes to the
// session under that token and set no cookie. A SetUser among them that the winner
// did not make as well (same user) fails with an error matching ErrConflict
// and changes nothing: a retry logs in on the renewed session.
func (s *Session) Renew() error {
	if s == nil {
		return ErrNoSession
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.saved {
		return ErrSaved
	}
	s.renew = true
	return nil
}

// Destroy ends the session when the response is saved, and clears the
// cookie. Changes made before it are dropped, and the request reads the
// session as empty from then on; values put (or a user bound by SetUser)
// after it, such as a message for the next page, go to a new session,
// whose cookie replaces the old one. The session is ended even if the client goes away meanwhile
// (the request's context cancelled; the store is then given 5 seconds).
// Ending the session ends its renewal too while the old token's grace
// period lasts (the token then leads to it).
//
// In a request that has run long enough for its token to have been renewed
// by another request meanwhile, and the grace period to have ended (see
// Manager.Middleware), Destroy first reads whether the token still leads to
// a session (one more round trip): if it does, the session is ended and the
// cookie cleared; if not, nothing is ended and the cookie is left alone.
// The browser may by then hold a newer token (a login on another tab), and
// a response cannot clear a cookie only if it still holds a given value:
// Set-Cookie replaces or clears by name whatever the browser holds
// (Clear-Site-Data, every cookie of the site). The cost: a session that
// ended by itself (expired, revoked) during such a request leaves its token
// in the browser, where it opens nothing, until its next request clears it.
func (s *Session) Destroy() error {
	if s == nil {
		return ErrNoSession
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.saved {
		return ErrSaved
	}
	// Changes made before are dropped with the session; those made after
	// go to a new one.
	s.destroy = true
	s.set, s.del, s.user, s.renew = nil, nil, "", false
	return nil
}

// errHijackLogin: SetUser, then Hijack before the response headers.
var errHijackLogin = errors.New("session: a login (SetUser) cannot be saved when the connection is hijacked: its cookie would not be sent")

// holdRenewal drops a pending Renew, whose token could not be sent (the
// connection is being hijacked), and refuses a pending SetUser, which
// must not bind the user to the token the browser already has.
func (s *Session) holdRenewal() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.user != "" {
		return errHijackLogin
	}
	s.renew = false
	return nil
}

// load reads the record once. When the request carries more than one
// token under the cookie's name and the first leads nowhere, it tries the
// next (up to maxCookieTokens): a token left under the cookie's old Domain
// or Path, or one planted by a sibling subdomain, comes first in every
// request (same path, older) and would otherwise hide the live session, a
// read of it clearing the live cookie. s.mu must be held.
func (s *Session) load() error {
	if s.loaded {
		return s.loadErr
	}
	s.loaded = true
	if s.id == "" {
		return nil
	}
	s.loadErr = s.reload()
	for s.loadErr == nil && !s.found && s.more && s.cand+1 < maxCookieTokens {
		s.cand++
		s.token, _ = cookieToken(s.cookies, s.m.cfg.cookie.Name, s.cand)
		s.id, _ = TokenID(s.token)
		_, s.more = cookieToken(s.cookies, s.m.cfg.cookie.Name, s.cand+1)
		s.loadErr = s.reload()
	}
	return s.loadErr
}

// reload reads the record again. s.mu must be held.
func (s *Session) reload() error {
	id := s.id
	if s.found {
		id = s.rec.ID
	}
	start := time.Now()
	rec, found, err := s.m.store.Load(s.ctx, id, s.m.cfg.idle)
	s.m.metrics.loads.Add(s.ctx, 1)
	s.m.observe(s.ctx, &s.m.metrics.load, start, err)
	if err != nil {
		return fmt.Errorf("session: load: %w", err)
	}
	s.rec, s.found = rec, found
	if !found {
		s.missed()
	}
	return nil
}

// missed records that the token was found leading nowhere, and whether the
// request had run long enough by then for lateMiss. s.mu must be held.
func (s *Session) missed() { s.missedLate = s.late() }

// late reports whether the request has run long enough for its token to
// have been renewed by another request, and the renewal's grace period to
// have ended, since it came (see lateMiss).
func (s *Session) late() bool {
	return s.m.cfg.now().Sub(s.start) >= max(s.m.cfg.grace/2, lateMissMin)
}

// live reports whether id still leads to a session, without moving its
// idle deadline.
func (s *Session) live(ctx context.Context, id string) (bool, error) {
	start := time.Now()
	_, found, err := s.m.store.Load(ctx, id, 0)
	s.m.metrics.loads.Add(ctx, 1)
	s.m.observe(ctx, &s.m.metrics.load, start, err)
	return found, err
}

// lateMiss reports whether the request's token, found leading nowhere, may
// have been live when the request came, and renewed meanwhile by another
// request (a login on another tab) whose alias then ended with the grace
// period: the request had run for half the grace period or more when it
// found the token missing (the other half allows for the time the request
// took to reach the Manager and the renewal's response to reach the
// browser), and for lateMissMin at least (with a grace period too short for
// requests in flight, an ordinary request must still be answered as a new
// visitor's). The browser may then hold the renewed token, and this
// response must not touch the cookie: cookies go by name, so a new
// session's cookie would replace the renewed token and clearing would
// delete it, logging the user out. The Manager cannot tell this from a
// session that had already ended (expired, revoked) when a long request
// came: the store keeps nothing of either. A login (SetUser) is never a
// late miss: it gets its session all the same. s.mu must be held.
func (s *Session) lateMiss() bool {
	return s.user == "" && s.token != "" && !s.issued && s.missedLate
}

// lateMissMin is the least time a request runs before lateMiss holds.
const lateMissMin = time.Second

func (s *Session) apply(id string, d Delta) (uint64, error) {
	start := time.Now()
	v, err := s.m.store.Apply(s.ctx, id, d)
	s.m.metrics.applies.Add(s.ctx, 1)
	s.m.observe(s.ctx, &s.m.metrics.apply, start, err)
	return v, err
}

// maxSize is Delta.MaxSize for a change: the session limit, when the store
// enforces it.
func (m *Manager) maxSize() int {
	if m.limits {
		return m.cfg.maxSession
	}
	return 0
}

// create makes a new record holding the pending values (sealed) and issues
// its token. s.mu must be held.
func (s *Session) create(values map[string][]byte) error {
	m := s.m
	tok, err := NewToken(s.user)
	if err != nil {
		return err
	}
	id, _ := TokenID(tok)
	sealed, err := s.sealAll(id, values)
	if err != nil {
		return err
	}
	ver, err := s.apply(id, Delta{Create: &Create{Absolute: m.cfg.absolute}, Set: sealed, User: s.user, Idle: m.cfg.idle})
	if err != nil {
		return fmt.Errorf("session: create: %w", err)
	}
	s.token, s.id, s.issued, s.found = tok, id, true, true
	s.rec = Record{ID: id, Values: make(map[string]Value, len(sealed)), Version: ver, User: s.user}
	for k, v := range sealed {
		s.rec.Values[k] = Value{Data: v, Version: ver}
	}
	s.user = ""
	return nil
}

// sealAll seals values for session id. s.mu must be held.
func (s *Session) sealAll(id string, values map[string][]byte) (map[string][]byte, error) {
	if len(values) == 0 {
		return nil, nil
	}
	out := make(map[string][]byte, len(values))
	for k, v := range values {
		sv, err := s.seal(id, k, v)
		if err != nil {
			return nil, err
		}
		out[k] = sv
	}
	return out, nil
}

// save writes what changed and sets or clears the cookie in h. s.mu is
// taken here.
func (s *Session) save(h http.Header) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.saved = true
	changed := len(s.set) > 0 || len(s.del) > 0
	if !s.loaded && !s.renew && !s.destroy && !changed {
		return nil // untouched: no backend call
	}
	m := s.m
	if s.destroy {
		// No read needed: deleting an alias deletes its target too; unless
		// the request carries several tokens (see load), to find the live
		// one. A read that failed says nothing: the session may well be
		// there.
		// A logout is carried out even if the client goes away meanwhile
		// (it closed the tab at once): the cookie it keeps would still open
		// the session. Within discardTimeout.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), discardTimeout)
		defer cancel()
		if s.more {
			reqCtx := s.ctx
			s.ctx = ctx
			err := s.load()
			s.ctx = reqCtx
			if err != nil {
				return fmt.Errorf("session: destroy: %w", err)
			}
		}
		id := s.id
		if s.found {
			id = s.rec.ID
		} else if s.loaded && s.loadErr == nil {
			id = "" // read and found missing: nothing to delete
		}
		clear := s.token != "" && !(id == "" && s.lateMiss())
		if id != "" && s.token != "" && !s.issued && s.late() {
			// The browser may hold a newer token by now (see lateMiss),
			// which clearing the cookie would delete: clear it only if the
			// token still leads to a session, which the delete ends (the
			// newer token is then its renewal's, ended with it).
			found, err := s.live(ctx, id)
			if err != nil {
				return fmt.Errorf("session: destroy: %w", err)
			}
			if !found {
				id, clear = "", false
			}
		}
		if id != "" {
			start := time.Now()
			err := m.store.Delete(ctx, id)
			m.observe(ctx, &m.metrics.delete, start, err)
			if err != nil {
				return fmt.Errorf("session: destroy: %w", err)
			}
		}
		h.Add("Vary", "Cookie")
		if (len(s.set) > 0 || s.user != "") && (clear || s.token == "" || s.user != "") {
			// Values put (or a user bound) after Destroy start a new
			// session; not when the browser may hold a newer token, unless
			// for a login, as for a late miss (see lateMiss).
			s.found = false
			if err := s.create(s.set); err != nil {
				return err
			}
			s.setCookie(h, m.cfg.absolute)
			return nil
		}
		if clear {
			s.clearCookie(h)
		}
		return nil
	}
	if !s.renew && s.blind(true) {
		return s.saveBlind(h)
	}
	readEarlier := s.loaded
	if err := s.load(); err != nil {
		return err
	}
	h.Add("Vary", "Cookie")
	switch {
	case !s.found:
		if s.lateMiss() {
			// Maybe renewed by another request while this one ran (see
			// lateMiss): the changes, a renewal too, are dropped and the
			// cookie left alone, as for a session that ended after it was
			// read. A login gets its session all the same.
			m.cfg.logger.LogAttrs(s.ctx, slog.LevelDebug, "session ended while the request ran; its changes are dropped")
			return nil
		}
		if len(s.set) == 0 && !s.renew {
			if s.token != "" {
				s.clearCookie(h) // stale: expired, revoked or unknown
			}
			return nil
		}
		if err := s.create(s.set); err != nil {
			return err
		}
	case s.renew:
		return s.rotate(h, readEarlier)
	case len(s.set) > 0 || len(s.del) > 0:
		var dels []string
		for k := range s.del {
			dels = append(dels, k)
		}
		if err := s.write(dels); err != nil {
			if errors.Is(err, ErrNotFound) {
				// Ended since it was read (revoked, destroyed, expired, or
				// renewed and its alias ended): writing would resurrect it.
				// The changes are dropped. The cookie is left alone (see
				// clearCookie).
				m.cfg.logger.LogAttrs(s.ctx, slog.LevelDebug, "session ended before its changes were saved")
				return nil
			}
			return fmt.Errorf("session: save: %w", err)
		}
	}
	if s.issued {
		s.setCookie(h, m.cfg.absolute)
	}
	return nil
}

// write applies the pending changes to the record read. With encryption,
// values are sealed to the ID of the record they are meant for, so they
// must not land in the copy a concurrent renewal made under a new ID (the
// store follows the alias it leaves, and they would never decrypt there):
// the write then states the versions read of the keys it sets, which a store
// refuses on an alias (see Store.Apply) and the session is read again,
// through the alias, and the values sealed to the new ID. A key changed
// meanwhile is a conflict too, and is overwritten likewise, as a Put does.
// s.mu must be held.
func (s *Session) write(dels []string) error {
	m := s.m
	var bo *retry.Backoff
	for range m.cfg.updateAttempts {
		sealed, err := s.sealAll(s.rec.ID, s.set)
		if err != nil {
			return err
		}
		d := Delta{Set: sealed, Delete: dels, Idle: m.cfg.idle, MaxSize: m.maxSize()}
		if m.keys != nil && len(sealed) > 0 {
			d.Expect = make(map[string]uint64, len(sealed))
			for k := range sealed {
				d.Expect[k] = s.rec.Values[k].Version
			}
		}
		_, err = s.apply(s.rec.ID, d)
		if d.Expect == nil || !errors.Is(err, ErrConflict) {
			return err
		}
		if bo == nil {
			bo = conflictBackoff()
		}
		if err := sleepCtx(s.ctx, bo.NextBackOff()); err != nil {
			return err
		}
		if err := s.reload(); err != nil {
			return err
		}
		if !s.found {
			return ErrNotFound
		}
	}
	return &ConflictError{}
}

// saveBlind writes the changes of a session that was not read in this
// request: one Apply, to which the store adds the session size limit. A
// session that no longer exists (expired, revoked, destroyed, never known)
// is not resurrected: as for a new visitor, the values set go into a new
// session with a new token; unless the request had run long enough for the
// token to have been renewed meanwhile (see lateMiss), when they are
// dropped. s.mu must be held.
func (s *Session) saveBlind(h http.Header) error {
	m := s.m
	h.Add("Vary", "Cookie")
	var dels []string
	if len(s.del) > 0 {
		dels = make([]string, 0, len(s.del))
		for k := range s.del {
			dels = append(dels, k)
		}
	}
	// Without encryption (the only case with blind values) sealing is the
	// identity, so s.set goes as it is.
	_, err := s.apply(s.id, Delta{Set: s.set, Delete: dels, Idle: m.cfg.idle, MaxSize: m.maxSize()})
	switch {
	case err == nil:
		return nil
	case !errors.Is(err, ErrNotFound):
		return fmt.Errorf("session: save: %w", err)
	case len(s.set) == 0:
		// Nothing to keep. The token may have been live when the request
		// came (see clearCookie): the cookie is left alone.
		return nil
	}
	s.loaded, s.found = true, false
	s.missed()
	if s.lateMiss() {
		m.cfg.logger.LogAttrs(s.ctx, slog.LevelDebug, "session ended while the request ran; its changes are dropped")
		return nil
	}
	if err := s.create(s.set); err != nil {
		return err
	}
	s.setCookie(h, m.cfg.absolute)
	return nil
}

// rotate copies the session to a new token and leaves the old ID as an
// alias, retrying if the old record changed meanwhile. A record read
// earlier in the request (stale) is read again first: a session revoked or
// ended since then is not copied, since the copy, bound to the user at
// the current revocation epoch, would be in the user's index until deleted.
// A session reached through an alias (the request's token is one a renewal
// replaced) was renewed meanwhile, however long ago: it is not renewed
// again (see renewedMeanwhile), or an old token (one planted before a
// login, too) would get a new token that outlives the grace period, and
// the renewed token would end with it. s.mu must be held.
func (s *Session) rotate(h http.Header, stale bool) error {
	m := s.m
	from := s.id
	if stale {
		if err := s.reload(); err != nil {
			return err
		}
	}
	for range 4 {
		if !s.found {
			// Ended since it was read (revoked, destroyed, expired, or
			// renewed and its alias ended): a copy would resurrect it. A
			// login gets a new session, as without one; otherwise the
			// changes are dropped, and the cookie left alone (see
			// clearCookie).
			if s.user != "" {
				return s.login(h)
			}
			m.cfg.logger.LogAttrs(s.ctx, slog.LevelDebug, "session ended before it was renewed")
			return nil
		}
		if s.rec.ID != from {
			return s.renewedMeanwhile(h)
		}
		user := s.user
		if user == "" {
			user = s.rec.User
		}
		plain := make(map[string][]byte, len(s.rec.Values)+len(s.set))
		for k, v := range s.rec.Values {
			if s.del[k] {
				continue
			}
			p, err := s.open(s.rec.ID, k, v.Data)
			if err != nil {
				return fmt.Errorf("session: renew: key %q: %w", k, err)
			}
			plain[k] = p
		}
		for k, v := range s.set {
			plain[k] = v
		}
		tok, err := NewToken(user)
		if err != nil {
			return err
		}
		nid, _ := TokenID(tok)
		sealed, err := s.sealAll(nid, plain)
		if err != nil {
			return err
		}
		if len(s.set) > 0 {
			// A Put that skipped the read checked only the pending values
			// (the store would check the rest at save, but a copy is a
			// create): check the whole copy, as stored.
			size := 0
			for k, v := range sealed {
				size += len(k) + len(v)
			}
			if size > m.cfg.maxSession {
				return &SizeError{Size: size, Limit: m.cfg.maxSession, Session: true}
			}
		}
		if _, err := s.apply(nid, Delta{
			Create: &Create{Deadline: s.rec.AbsoluteDeadline, Created: s.rec.Created},
			Set:    sealed, User: user, Idle: m.cfg.idle,
		}); err != nil {
			if errors.Is(err, ErrNotFound) { // the absolute deadline has passed
				if s.user != "" {
					return s.login(h)
				}
				s.clearCookie(h)
				return nil
			}
			if !errors.Is(err, ErrConflict) {
				s.discard(nid) // it may have been made all the same
			}
			return fmt.Errorf("session: renew: %w", err)
		}
		start := time.Now()
		if m.aliaser == nil {
			err = m.store.Delete(s.ctx, s.rec.ID)
		} else {
			err = m.aliaser.Alias(s.ctx, s.rec.ID, nid, s.rec.Version, m.cfg.grace)
		}
		m.observe(s.ctx, &m.metrics.alias, start, err)
		known := errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound)
		if err != nil && !known && m.aliaser != nil {
			// The alias may have been made all the same (a reply lost, a
			// context that ended while Redis ran it): then the old ID
			// leads to the copy, and deleting it would end the session.
			switch made, cerr := s.aliased(nid); {
			case made:
				err = nil
			case cerr != nil:
				m.cfg.logger.LogAttrs(s.ctx, slog.LevelWarn, "session renewal's outcome unknown; its copy is kept", slog.Any("error", err), slog.Any("check", cerr))
				return fmt.Errorf("session: renew: %w", err)
			}
		}
		if err == nil {
			s.token, s.id, s.issued = tok, nid, true
			s.setCookie(h, min(time.Until(s.rec.AbsoluteDeadline), m.cfg.absolute))
			return nil
		}
		s.discard(nid)
		if !known {
			return fmt.Errorf("session: renew: %w", err)
		}
		// The old record changed since it was read (conflict), or it
		// ended or a concurrent request renewed it first (not found):
		// read it again, through the alias the winner left, and see.
		if err := s.reload(); err != nil {
			return err
		}
	}
	return fmt.Errorf("session: renew: %w", ErrConflict)
}

// login binds a new session, holding the pending values, to s.user and
// issues its token: a login whose session ended before it could be renewed.
// s.mu must be held.
func (s *Session) login(h http.Header) error {
	s.found = false
	if err := s.create(s.set); err != nil {
		return err
	}
	s.setCookie(h, s.m.cfg.absolute)
	return nil
}

// discardTimeout bounds the deletion of a failed renewal's copy, and that
// of a destroyed session, once the request's context has ended.
const discardTimeout = 5 * time.Second

// discard deletes nid, the copy made by a renewal that failed. Its token
// was never issued, but a copy bound to a user is in the user's index, and
// live, until deleted: so it is deleted even when the request's context has
// ended (a client that went away is what most often fails a renewal
// half-way), within discardTimeout.
func (s *Session) discard(nid string) {
	m := s.m
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), discardTimeout)
	defer cancel()
	start := time.Now()
	err := m.store.Delete(ctx, nid)
	m.observe(ctx, &m.metrics.delete, start, err)
	if err != nil {
		m.cfg.logger.LogAttrs(ctx, slog.LevelWarn, "session copy of a failed renewal not deleted; it expires unused", slog.Any("error", err))
	}
}

// aliased reports whether the old ID (s.rec.ID) now leads to nid, the copy
// of a renewal whose Alias failed without saying whether it was made. It
// reads within discardTimeout, even when the request's context has ended.
func (s *Session) aliased(nid string) (bool, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), discardTimeout)
	defer cancel()
	start := time.Now()
	rec, found, err := s.m.store.Load(ctx, s.rec.ID, 0)
	s.m.metrics.loads.Add(ctx, 1)
	s.m.observe(ctx, &s.m.metrics.load, start, err)
	if err != nil {
		return false, err
	}
	return found && rec.ID == nid, nil
}

// renewedMeanwhile saves the changes of a request whose renewal lost to a
// concurrent one: s.rec is the session under the winner's ID, read through
// the alias it left, and the winner's response carries its token. The
// pending changes are written there, and this response sets no cookie (the
// old token reaches the session through the alias until the winner's cookie
// replaces it). A user binding that the winner's copy lacks is not made on
// it (its token was not issued for that login): the renewal fails with
// ErrConflict and the request can be retried. s.mu must be held.
func (s *Session) renewedMeanwhile(h http.Header) error {
	if s.user != "" && s.user != s.rec.User {
		return fmt.Errorf("session: renew: renewed by a concurrent request without this login: %w", ErrConflict)
	}
	if len(s.set) == 0 && len(s.del) == 0 {
		return nil
	}
	dels := make([]string, 0, len(s.del))
	for k := range s.del {
		dels = append(dels, k)
	}
	if err := s.write(dels); err != nil {
		if errors.Is(err, ErrNotFound) { // ended meanwhile: see clearCookie
			return nil
		}
		return fmt.Errorf("session: renew: %w", err)
	}
	return nil
}

func (s *Session) cookie() *http.Cookie {
	cc := s.m.cfg.cookie
	return &http.Cookie{
		Name: cc.Name, Path: cc.Path, Domain: cc.Domain, SameSite: cc.SameSite,
		HttpOnly: true, Secure: !s.m.cfg.insecure,
	}
}

func (s *Session) setCookie(h http.Header, maxAge time.Duration) {
	c := s.cookie()
	c.Value = s.token
	if !s.m.cfg.cookie.BrowserSession {
		c.MaxAge = max(int(maxAge/time.Second), 1)
	}
	h.Add("Set-Cookie", c.String())
	// Added to the handler's directives (a no-store stays), not in their place.
	h.Add("Cache-Control", `no-cache="Set-Cookie"`)
}

// clearCookie clears the session cookie: on Destroy (in a long request,
// only of a session still there: see Destroy), and for a token that led
// nowhere when the request read it. A session found when the request
// read it, and gone when it saves (destroyed, revoked or expired meanwhile,
// or renewed by another request and its alias ended with the grace period),
// gets no cookie change: cookies go by name, not value, and by then the
// browser may hold a newer token (the renewal's, a new login's), which
// clearing would delete. An ended token left in the browser is cleared by
// its next request.
func (s *Session) clearCookie(h http.Header) {
	c := s.cookie()
	c.MaxAge = -1
	h.Add("Set-Cookie", c.String())
	// As in setCookie: a cache must not replay the clearing to others.
	h.Add("Cache-Control", `no-cache="Set-Cookie"`)
}
