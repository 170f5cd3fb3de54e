package memstore

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/activekit/activekit/session"
)

// Compile-time checks.
var (
	_ session.Store       = (*Store)(nil)
	_ session.Aliaser     = (*Store)(nil)
	_ session.UserIndex   = (*Store)(nil)
	_ session.SizeLimiter = (*Store)(nil)
)

// Option configures a Store.
type Option interface{ apply(*Store) }

type optionFunc func(*Store)

func (f optionFunc) apply(s *Store) { f(s) }

// WithClock sets the clock the store reads to decide expiry (time.Now by
// default). Tests pass a fake clock to expire sessions without waiting.
func WithClock(now func() time.Time) Option {
	return optionFunc(func(s *Store) { s.now = now })
}

// Store is an in-process session store. It is safe for concurrent use. It
// starts no goroutine: expired records are dropped when they are next touched,
// or all at once by DeleteExpired.
type Store struct {
	now func() time.Time

	mu      sync.Mutex
	records map[string]*record
	// users indexes every bound record, so DestroyUser drops them all and
	// needs no revocation epoch (which would outlive the user's sessions).
	users map[string]map[string]bool // user -> session IDs
}

type record struct {
	alias    string // non-empty: this ID is an alias of that one
	values   map[string]session.Value
	version  uint64
	user     string
	created  time.Time
	idle     time.Time // idle deadline (for an alias: when it ends)
	absolute time.Time
}

// New returns an empty store.
func New(opts ...Option) (*Store, error) {
	s := &Store{
		records: map[string]*record{},
		users:   map[string]map[string]bool{},
	}
	for _, o := range opts {
		if o == nil {
			return nil, errors.New("memstore: nil option")
		}
		o.apply(s)
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// live returns the record of id, dropping it if it has expired or been
// revoked. s.mu must be held.
func (s *Store) live(id string, now time.Time) *record {
	r := s.records[id]
	if r == nil {
		return nil
	}
	if !now.Before(r.idle) || (r.alias == "" && !now.Before(r.absolute)) {
		s.drop(id, r)
		return nil
	}
	return r
}

func (s *Store) drop(id string, r *record) {
	delete(s.records, id)
	if r.user != "" {
		s.unindex(id, r.user)
	}
}

// unindex removes id from the index of user. s.mu must be held.
func (s *Store) unindex(id, user string) {
	delete(s.users[user], id)
	if len(s.users[user]) == 0 {
		delete(s.users, user)
	}
}

// resolve follows an alias. s.mu must be held.
func (s *Store) resolve(id string, now time.Time) (string, *record) {
	for range 4 {
		r := s.live(id, now)
		if r == nil || r.alias == "" {
			return id, r
		}
		id = r.alias
	}
	return id, nil
}

// Load implements session.Store.
func (s *Store) Load(ctx context.Context, id string, idle time.Duration) (session.Record, bool, error) {
	if err := ctx.Err(); err != nil {
		return session.Record{}, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	id, r := s.resolve(id, now)
	if r == nil {
		return session.Record{}, false, nil
	}
	if idle > 0 {
		if d := minTime(now.Add(idle), r.absolute); d.After(r.idle) {
			r.idle = d
		}
	}
	return session.Record{
		ID:               id,
		Values:           cloneValues(r.values),
		Version:          r.version,
		User:             r.user,
		Created:          r.created,
		IdleDeadline:     r.idle,
		AbsoluteDeadline: r.absolute,
	}, true, nil
}

// Apply implements session.Store.
func (s *Store) Apply(ctx context.Context, id string, d session.Delta) (uint64, error) {
	if err := d.Validate(); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	var r *record
	if d.Create != nil {
		if s.live(id, now) != nil {
			return 0, &session.ConflictError{}
		}
		r = &record{values: map[string]session.Value{}, created: now, absolute: now.Add(d.Create.Absolute)}
		if !d.Create.Deadline.IsZero() {
			r.created, r.absolute = d.Create.Created, d.Create.Deadline
		}
		if !now.Before(r.absolute) {
			return 0, session.ErrNotFound
		}
	} else {
		if a := s.live(id, now); a != nil && a.alias != "" && len(d.Expect) > 0 {
			// The versions were read from the record before it was
			// copied to the target, whose versions start again.
			return 0, &session.ConflictError{}
		}
		id, r = s.resolve(id, now)
		if r == nil {
			return 0, session.ErrNotFound
		}
	}
	for k, want := range d.Expect {
		if r.values[k].Version != want {
			return 0, &session.ConflictError{Key: k}
		}
	}
	if d.MaxSize > 0 && len(d.Set) > 0 {
		if n := sizeAfter(r.values, d); n > d.MaxSize {
			return 0, &session.SizeError{Size: n, Limit: d.MaxSize, Session: true}
		}
	}
	if d.Create != nil {
		s.records[id] = r
	}
	r.version++
	for k, v := range d.Set {
		r.values[k] = session.Value{Data: append([]byte(nil), v...), Version: r.version}
	}
	for _, k := range d.Delete {
		delete(r.values, k)
	}
	if d.User != "" && d.User != r.user {
		if r.user != "" {
			s.unindex(id, r.user)
		}
		r.user = d.User
		if s.users[d.User] == nil {
			s.users[d.User] = map[string]bool{}
		}
		s.users[d.User][id] = true
	}
	if idle := minTime(now.Add(d.Idle), r.absolute); idle.After(r.idle) {
		r.idle = idle // never backwards
	}
	return r.version, nil
}

// EnforcesMaxSize implements session.SizeLimiter.
func (s *Store) EnforcesMaxSize() bool { return true }

// sizeAfter returns the size of values once d is applied.
func sizeAfter(values map[string]session.Value, d session.Delta) int {
	n := 0
	for k, v := range d.Set {
		n += len(k) + len(v)
	}
	for k, v := range values {
		if _, set := d.Set[k]; !set {
			n += len(k) + len(v.Data)
		}
	}
	gone := make(map[string]bool, len(d.Delete))
	for _, k := range d.Delete {
		if v, ok := values[k]; ok && !gone[k] {
			gone[k] = true
			n -= len(k) + len(v.Data)
		}
	}
	return n
}

// Delete implements session.Store.
func (s *Store) Delete(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for range 4 {
		r := s.live(id, now)
		if r == nil {
			return nil
		}
		s.drop(id, r)
		if r.alias == "" {
			return nil
		}
		id = r.alias
	}
	return nil
}

// Alias implements session.Aliaser.
func (s *Store) Alias(ctx context.Context, oldID, newID string, ifVersion uint64, grace time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	r := s.live(oldID, now)
	if r == nil || r.alias != "" {
		return session.ErrNotFound
	}
	if r.version != ifVersion {
		return &session.ConflictError{}
	}
	s.drop(oldID, r)
	s.records[oldID] = &record{alias: newID, idle: now.Add(grace)}
	return nil
}

// Sessions implements session.UserIndex.
func (s *Store) Sessions(ctx context.Context, user string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	var ids []string
	for id := range s.users[user] {
		if s.live(id, now) != nil {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// DestroyUser implements session.UserIndex.
func (s *Store) DestroyUser(ctx context.Context, user string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range s.users[user] {
		if r := s.records[id]; r != nil {
			s.drop(id, r)
		}
	}
	delete(s.users, user)
	return nil
}

// DeleteExpired removes every expired record and returns how many it removed.
// Expired records are invisible anyway; call it now and then to free memory in
// a long-running process.
func (s *Store) DeleteExpired() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	n := 0
	for id := range s.records {
		if s.live(id, now) == nil {
			n++
		}
	}
	return n
}

// Len returns the number of records held, expired or not, aliases included.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.records)
}

func cloneValues(m map[string]session.Value) map[string]session.Value {
	out := make(map[string]session.Value, len(m))
	for k, v := range m {
		out[k] = session.Value{Data: append([]byte(nil), v.Data...), Version: v.Version}
	}
	return out
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
