package memcachedstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// The value of every item this store writes starts with formatV1 and a kind
// byte. Numbers are varints (times as signed Unix milliseconds), strings and
// byte slices a uvarint length then the bytes. Lists are sorted by their
// first field, without duplicates, so an item has exactly one encoding:
// decode accepts only what encode produces (a fuzz test checks the round
// trip byte for byte).
//
//	session: version, created, idle deadline, absolute deadline, user, epoch,
//	         n, n × (key, key version, data)
//	alias:   target ID, grace deadline
//	users:   n, n × (user, epoch, until, m, m × (session ID, absolute deadline))
const formatV1 = 1

const (
	kindSession = 1
	kindAlias   = 2
	kindUsers   = 3
)

// ErrCorrupt: an item under the store's prefix that this store did not
// write (or wrote in a format it no longer reads). Load and Apply report it
// rather than treat the session as missing.
var ErrCorrupt = errors.New("memcachedstore: corrupt item")

// value is one session key.
type value struct {
	key     string
	version uint64
	data    []byte
}

// record is a session as stored.
type record struct {
	version                 uint64
	created, idle, absolute int64 // Unix milliseconds
	user                    string
	epoch                   uint64
	values                  []value // sorted by key
}

// alias points a rotated-out ID at its successor until deadline.
type alias struct {
	target   string
	deadline int64
}

// userEntry is one user's revocation epoch and session index. until is the
// latest absolute deadline of any session ever bound to the user at any
// epoch: the entry must outlive it, or a revoked session could come back.
type userEntry struct {
	user     string
	epoch    uint64
	until    int64
	sessions []indexed // sorted by ID
}

type indexed struct {
	id       string
	deadline int64
}

// users is the item holding the entries of every user whose tag is the
// item's (several users may share a 48-bit tag).
type users struct {
	entries []userEntry // sorted by user
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func encodeRecord(r *record) []byte {
	n := 64 + len(r.user)
	for _, v := range r.values {
		n += len(v.key) + len(v.data) + 16
	}
	b := make([]byte, 0, n)
	b = append(b, formatV1, kindSession)
	b = binary.AppendUvarint(b, r.version)
	b = binary.AppendVarint(b, r.created)
	b = binary.AppendVarint(b, r.idle)
	b = binary.AppendVarint(b, r.absolute)
	b = appendString(b, r.user)
	b = binary.AppendUvarint(b, r.epoch)
	b = binary.AppendUvarint(b, uint64(len(r.values)))
	for _, v := range r.values {
		b = appendString(b, v.key)
		b = binary.AppendUvarint(b, v.version)
		b = binary.AppendUvarint(b, uint64(len(v.data)))
		b = append(b, v.data...)
	}
	return b
}

func encodeAlias(a alias) []byte {
	b := make([]byte, 0, 16+len(a.target))
	b = append(b, formatV1, kindAlias)
	b = appendString(b, a.target)
	return binary.AppendVarint(b, a.deadline)
}

func encodeUsers(u *users) []byte {
	var b []byte
	b = append(b, formatV1, kindUsers)
	b = binary.AppendUvarint(b, uint64(len(u.entries)))
	for _, e := range u.entries {
		b = appendString(b, e.user)
		b = binary.AppendUvarint(b, e.epoch)
		b = binary.AppendVarint(b, e.until)
		b = binary.AppendUvarint(b, uint64(len(e.sessions)))
		for _, s := range e.sessions {
			b = appendString(b, s.id)
			b = binary.AppendVarint(b, s.deadline)
		}
	}
	return b
}

// decoder reads the fields of one item; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = errors.New(what)
	}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	// Reject overflow, truncation and non-minimal encodings alike.
	if n <= 0 || n != len(binary.AppendUvarint(nil, v)) {
		d.fail("bad uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 || n != len(binary.AppendVarint(nil, v)) {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("length past the end")
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string { return string(d.bytes()) }

// count reads a list length, refusing one that the remaining bytes cannot
// hold at min bytes per element (so a forged count cannot make us allocate).
func (d *decoder) count(min int) int {
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b)/min) {
		d.fail("count past the end")
		return 0
	}
	return int(n)
}

// header checks the format and returns the kind.
func header(b []byte) (byte, *decoder, error) {
	if len(b) < 2 || b[0] != formatV1 {
		return 0, nil, errors.New("unknown format")
	}
	return b[1], &decoder{b: b[2:]}, nil
}

func (d *decoder) finish() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	return d.err
}

// item is a decoded item: exactly one of its fields is set.
type item struct {
	rec   *record
	alias *alias
	users *users
}

func decode(b []byte) (item, error) {
	kind, d, err := header(b)
	if err != nil {
		return item{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	var it item
	switch kind {
	case kindSession:
		it.rec, err = d.record()
	case kindAlias:
		a := alias{target: d.string(), deadline: d.varint()}
		if d.err == nil && !validID(a.target) {
			d.fail("bad alias target")
		}
		it.alias, err = &a, d.finish()
	case kindUsers:
		it.users, err = d.users()
	default:
		err = errors.New("unknown kind")
	}
	if err != nil {
		return item{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return it, nil
}

func (d *decoder) record() (*record, error) {
	r := &record{
		version:  d.uvarint(),
		created:  d.varint(),
		idle:     d.varint(),
		absolute: d.varint(),
		user:     d.string(),
		epoch:    d.uvarint(),
	}
	n := d.count(3) // key length, version, data length
	if d.err != nil {
		return nil, d.err
	}
	switch {
	case r.version == 0:
		d.fail("version 0")
	case r.idle > r.absolute:
		d.fail("idle deadline after the absolute deadline")
	case r.user == "" && r.epoch != 0:
		d.fail("epoch without a user")
	}
	r.values = make([]value, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		v := value{key: d.string(), version: d.uvarint(), data: d.bytes()}
		switch {
		case d.err != nil:
		case v.version == 0 || v.version > r.version:
			d.fail("key version out of range")
		case i > 0 && v.key <= r.values[i-1].key:
			d.fail("keys out of order")
		}
		r.values = append(r.values, v)
	}
	if err := d.finish(); err != nil {
		return nil, err
	}
	return r, nil
}

func (d *decoder) users() (*users, error) {
	n := d.count(5) // user length, user, epoch, until, session count
	u := &users{entries: make([]userEntry, 0, n)}
	for i := 0; i < n && d.err == nil; i++ {
		e := userEntry{user: d.string(), epoch: d.uvarint(), until: d.varint()}
		m := d.count(2) // ID length, deadline
		if d.err != nil {
			break
		}
		if e.user == "" || (i > 0 && e.user <= u.entries[i-1].user) {
			d.fail("users out of order")
			break
		}
		e.sessions = make([]indexed, 0, m)
		for j := 0; j < m && d.err == nil; j++ {
			s := indexed{id: d.string(), deadline: d.varint()}
			switch {
			case d.err != nil:
			case !validID(s.id):
				d.fail("bad session ID")
			case j > 0 && s.id <= e.sessions[j-1].id:
				d.fail("sessions out of order")
			}
			e.sessions = append(e.sessions, s)
		}
		u.entries = append(u.entries, e)
	}
	if err := d.finish(); err != nil {
		return nil, err
	}
	return u, nil
}

// decodeUsers decodes a user item.
func decodeUsers(b []byte) (*users, error) {
	it, err := decode(b)
	if err != nil {
		return nil, err
	}
	if it.users == nil {
		return nil, fmt.Errorf("%w: not a user item", ErrCorrupt)
	}
	return it.users, nil
}

// entry returns the entry of user, or nil.
func (u *users) entry(user string) *userEntry {
	i, ok := slices.BinarySearchFunc(u.entries, user, func(e userEntry, user string) int { return strings.Compare(e.user, user) })
	if !ok {
		return nil
	}
	return &u.entries[i]
}

// ensure returns the entry of user, adding it at epoch if missing.
func (u *users) ensure(user string, epoch uint64) *userEntry {
	i, ok := slices.BinarySearchFunc(u.entries, user, func(e userEntry, user string) int { return strings.Compare(e.user, user) })
	if !ok {
		u.entries = slices.Insert(u.entries, i, userEntry{user: user, epoch: epoch})
	}
	return &u.entries[i]
}

// add indexes id with its absolute deadline.
func (e *userEntry) add(id string, deadline int64) {
	i, ok := slices.BinarySearchFunc(e.sessions, id, func(s indexed, id string) int { return strings.Compare(s.id, id) })
	if ok {
		e.sessions[i].deadline = deadline
	} else {
		e.sessions = slices.Insert(e.sessions, i, indexed{id: id, deadline: deadline})
	}
	e.until = max(e.until, deadline)
}

// prune drops index entries whose session has passed its absolute deadline,
// and entries of users none of whose sessions can still be alive.
func (u *users) prune(now int64) {
	u.entries = slices.DeleteFunc(u.entries, func(e userEntry) bool { return e.until <= now })
	for i := range u.entries {
		e := &u.entries[i]
		e.sessions = slices.DeleteFunc(e.sessions, func(s indexed) bool { return s.deadline <= now })
	}
}

// until returns the latest deadline the item must outlive.
func (u *users) until() int64 {
	var t int64
	for _, e := range u.entries {
		t = max(t, e.until)
	}
	return t
}
