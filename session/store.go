package session

import (
	"context"
	"errors"
	"time"
)

// Store keeps session records outside the process. It speaks in deltas: a
// write names only the keys it sets and deletes, so two instances changing
// different keys of one session never undo each other, and a write that
// depends on a key's previous value states the version it read
// (compare-and-set) instead of overwriting blindly.
//
// # Identifiers
//
// A store sees only IDs made by [TokenID]: the SHA-256 of the token in the
// cookie, never the token itself, so a dump of the store cannot be replayed as
// cookies. An ID is "hash" or "tag.hash", letters, digits, '-' and '_' only;
// [HashTag] gives the part a clustered store must keep in one shard with the
// user's index (see [UserIndex]).
//
// # Clocks and expiry
//
// Durations in a [Delta] and in Load are measured by the store's own clock
// (Redis's TIME, the memstore's injected clock), and the deadlines in a
// [Record] are read on that clock. A record has an idle deadline, moved
// forward by Load and Apply, and an absolute deadline fixed at creation; the
// idle deadline never passes the absolute one. Once either has passed, the
// record is gone for every method: the store enforces it itself (a key
// expiry, a check at load), not the cookie. The idle deadline never moves
// backwards: a Load or Apply with a shorter idle timeout than an earlier
// one (instances configured differently, as during a rollout) leaves it
// where it is.
//
// # Versions
//
// Every successful Apply increments the record's Version by one and returns
// it. The version of a key is the record version of the Apply that last set
// it; an absent key has version 0. A key that is deleted and set again gets a
// new, higher version, so a compare-and-set cannot be fooled by A-B-A.
//
// # Contract
//
// Every implementation must:
//
//   - be safe for concurrent use by many goroutines, and by many processes
//     sharing the backend: Apply is atomic (all of the delta or none of it)
//     and linearizable per record, so concurrent Applies to different keys
//     all survive and concurrent compare-and-sets on one key succeed one at a
//     time;
//   - report a missing, expired, revoked or destroyed record from Load as
//     found=false with a nil error (not-found is not a failure);
//   - never resurrect a record: an Apply without [Delta.Create] on a record
//     that does not exist (never created, expired, revoked or deleted) changes
//     nothing and returns an error matching [ErrNotFound]; an Apply with
//     Create on an ID that exists changes nothing and returns [ErrConflict];
//   - refuse a delta whose expected versions ([Delta.Expect]) do not all
//     match, changing nothing, with an error matching [ErrConflict] (a
//     *[ConflictError] naming the key);
//   - treat deleting a missing key, and deleting a missing record, as
//     success;
//   - never retry on its own: a failed call is reported to the caller (the
//     Manager), which decides;
//   - honour ctx: when ctx is cancelled or its deadline passes, return
//     promptly with an error that matches ctx.Err() through errors.Is. For a
//     remote store a write cancelled in flight may or may not have been
//     applied (as with any network write); a compare-and-set makes a retry
//     safe.
//
// Extra abilities are optional interfaces found by type assertion: [Aliaser]
// (token rotation with a grace period) and [UserIndex] (a user's sessions,
// log out everywhere). The conformance suite in session/sessiontest checks all of the above.
type Store interface {
	// Load returns the record of id. When idle > 0 it also moves the idle
	// deadline to now+idle (never past the absolute deadline, never
	// backwards), in the same round trip as the read (a remote store may
	// need a second one in rare cases, such as capping the deadline at the
	// absolute one). A store may skip the move when it made it less than a
	// short resolution ago (redisstore.WithIdleResolution, at most a tenth
	// of idle): the deadline then falls at most that resolution short of
	// now+idle, and the Record's IdleDeadline is a lower bound of the real
	// one. When id is an alias left by [Aliaser.Alias], Load
	// returns the record it points to, with Record.ID set to the target's
	// ID.
	Load(ctx context.Context, id string, idle time.Duration) (rec Record, found bool, err error)

	// Apply applies d to the record of id atomically and returns the record's
	// new version. When id is an alias, the delta is applied to its target,
	// unless it has expectations ([Delta.Expect]): those versions were read
	// from the record before it was copied to the target, where versions
	// start again (a stale one could match), so the delta changes nothing
	// and fails with a *[ConflictError] whose Key is ""; the caller reads
	// again (Load follows the alias) and retries on the target's ID.
	Apply(ctx context.Context, id string, d Delta) (version uint64, err error)

	// Delete removes the record of id (and, for an alias, its target). A
	// missing record is no error.
	Delete(ctx context.Context, id string) error
}

// Aliaser is implemented by stores that can rotate a session's ID while
// requests holding the old token are still in flight.
type Aliaser interface {
	// Alias turns oldID into an alias of newID for grace, provided the record
	// of oldID still has version ifVersion; else it changes nothing and
	// returns [ErrConflict] (the caller re-reads oldID and copies again). A
	// missing oldID, or one that is already an alias, gives [ErrNotFound].
	// The record of newID must exist already (the Manager creates it with
	// [Delta.Create] first); while the alias lives, Load and Apply on oldID
	// act on newID. After grace, oldID is gone.
	Alias(ctx context.Context, oldID, newID string, ifVersion uint64, grace time.Duration) error
}

// UserIndex is implemented by stores that index sessions by user, for "log
// out everywhere". A session is bound to a user by an Apply whose
// [Delta.User] is set; its ID must then be a user ID made by [NewToken] for
// that user (so that, on a clustered store, the session and the user's index
// share a shard).
//
// Each user has a revocation epoch. Binding records the user's current epoch
// in the session; DestroyUser increments it, and Load and Apply treat a
// session whose recorded epoch is not the user's current one as not found.
// Revoking every session of a user is therefore one write, even for sessions
// the index missed.
type UserIndex interface {
	// Sessions returns the IDs of the live sessions bound to user, in no
	// particular order.
	Sessions(ctx context.Context, user string) ([]string, error)
	// DestroyUser revokes every session bound to user. Sessions bound
	// afterwards are unaffected.
	DestroyUser(ctx context.Context, user string) error
}

// Record is a session as a store holds it.
type Record struct {
	// ID is the ID the record lives under; it differs from the ID asked for
	// when that one was an alias.
	ID string
	// Values holds the session's keys.
	Values map[string]Value
	// Version counts the Applies the record has seen.
	Version uint64
	// User is the user the session is bound to, or "".
	User string
	// Created is when the record was created, on the store's clock.
	Created time.Time
	// IdleDeadline is when the record expires unless used again.
	IdleDeadline time.Time
	// AbsoluteDeadline is when the record expires whatever happens.
	AbsoluteDeadline time.Time
}

// Value is one key of a session record.
type Value struct {
	// Data is the encoded (and possibly encrypted) value.
	Data []byte
	// Version is the record version of the Apply that set the key (> 0).
	Version uint64
}

// Delta is a change to one session record.
type Delta struct {
	// Create makes the record: it must not exist yet. Without it the record
	// must exist.
	Create *Create
	// Set holds the keys to set, with their new data.
	Set map[string][]byte
	// Delete holds the keys to remove. A key must not be in both Set and
	// Delete.
	Delete []string
	// Expect holds, for some keys, the version each must have for the delta
	// to apply; 0 means "absent".
	Expect map[string]uint64
	// Idle moves the idle deadline to now+Idle (capped at the absolute
	// deadline), never backwards; as in Store.Load, a store may skip the
	// move within a short resolution of its last one. It must be positive.
	Idle time.Duration
	// User, when not empty, binds the record to that user at the user's
	// current revocation epoch and adds it to the user's index. Stores that
	// do not implement [UserIndex] keep the user in the record only.
	User string
	// MaxSize, when positive, bounds the record's size after the delta: the
	// sum, over its keys, of the key's length and its data's length. A
	// delta that sets a key and would leave the record larger changes
	// nothing and fails with an error matching [ErrTooLarge] (a *[SizeError]
	// with Session set). Only stores implementing [SizeLimiter] honour it;
	// others ignore it.
	MaxSize int
}

// SizeLimiter is implemented by stores whose Apply honours [Delta.MaxSize]
// atomically with the write. The Manager then saves a session the handler
// changed without reading it (one round trip instead of two), since the
// store itself enforces the session size limit.
type SizeLimiter interface {
	// EnforcesMaxSize reports whether Apply honours Delta.MaxSize.
	EnforcesMaxSize() bool
}

// Create says how to create a record.
type Create struct {
	// Absolute is the record's lifetime from now; it fixes the absolute
	// deadline. Used when Deadline is zero; it must then be positive.
	Absolute time.Duration
	// Deadline, when not zero, is the absolute deadline, on the store's
	// clock, and Created the creation time: used when a session is copied to
	// a new ID, which keeps the deadline of the original.
	Deadline, Created time.Time
}

// Errors shared by every store.
var (
	// ErrNotFound: the record does not exist (never created, expired, revoked
	// or deleted). Load reports this as found=false instead.
	ErrNotFound = errors.New("session: not found")
	// ErrConflict: a compare-and-set failed, or a record to create exists.
	ErrConflict = errors.New("session: conflict")
)

// ConflictError is returned when an expected version does not match.
type ConflictError struct {
	// Key is the key whose version differed ("" when the record itself
	// existed on create or changed under an alias).
	Key string
}

func (e *ConflictError) Error() string {
	if e.Key == "" {
		return "session: conflict"
	}
	return "session: conflict on key " + e.Key
}

// Is makes a *ConflictError match ErrConflict.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// Validate checks a delta before a store applies it; stores call it first.
func (d *Delta) Validate() error {
	if d.Idle <= 0 {
		return errors.New("session: delta without a positive idle timeout")
	}
	if d.Create != nil && d.Create.Deadline.IsZero() && d.Create.Absolute <= 0 {
		return errors.New("session: create without a positive absolute timeout")
	}
	for _, k := range d.Delete {
		if _, ok := d.Set[k]; ok {
			return errors.New("session: key " + k + " both set and deleted")
		}
	}
	return nil
}
