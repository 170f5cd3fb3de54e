package memcachedstore

import (
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/sessiontest"
)

// indexed returns the IDs in user's index, as stored.
func indexedIDs(t *testing.T, c *memcache.Client, s *Store, user string) []string {
	t.Helper()
	it, err := c.Get(s.usersKey(session.UserTag(user)))
	if err != nil {
		t.Fatal(err)
	}
	u, err := decodeUsers(it.Value)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	if e := u.entry(user); e != nil {
		for _, is := range e.sessions {
			ids = append(ids, is.id)
		}
	}
	return ids
}

// TestIndexDropsEndedSessions: a user who logs in and out again and again
// (a synthetic login check every minute, a script) does not grow the user
// item without bound. Before, an ended session stayed in the index until its
// absolute deadline: with a 30-day absolute timeout, a login a minute grew
// the item by about 60 bytes each, every login rewrote it whole, and after
// some 17,000 logins (35,000 with -I 2m) it no longer fit in an item, and
// every login of that user failed as if Memcached were down.
func TestIndexDropsEndedSessions(t *testing.T) {
	c := memcache.New(testenv.MemcachedAddr(t))
	t.Cleanup(func() { _ = c.Close() })
	s, err := New(c, WithPrefix(testenv.Name(t)+":"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	user := "synthetic@example.com"
	bind := func(id string) {
		t.Helper()
		if _, err := s.Apply(ctx, id, session.Delta{Create: &session.Create{Absolute: 30 * 24 * time.Hour}, User: user, Idle: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}
	kept := sessiontest.NewID(t, user)
	bind(kept)
	for range 3 * pruneAt {
		id := sessiontest.NewID(t, user)
		bind(id)
		if err := s.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	ids := indexedIDs(t, c, s, user)
	if len(ids) > pruneAt {
		t.Fatalf("%d sessions in the index after %d logins and logouts, one session live; want at most %d", len(ids), 3*pruneAt+1, pruneAt)
	}
	if !slices.Contains(ids, kept) {
		t.Fatalf("the live session %s left the index", kept)
	}
	if got, err := s.Sessions(ctx, user); err != nil || !slices.Equal(got, []string{kept}) {
		t.Fatalf("Sessions = %v, %v; want [%s]", got, err, kept)
	}
}

// hookSelector runs hook when key is picked for the at-th time.
type hookSelector struct {
	memcache.ServerList
	mu    sync.Mutex
	key   string
	n, at int
	hook  func()
}

func (h *hookSelector) PickServer(key string) (net.Addr, error) {
	h.mu.Lock()
	var hook func()
	if key == h.key {
		if h.n++; h.n == h.at {
			hook = h.hook
		}
	}
	h.mu.Unlock()
	if hook != nil {
		hook()
	}
	return h.ServerList.PickServer(key)
}

// TestIndexDropRacesLogin: a login on another instance drops the ended
// sessions from the index just after this instance indexed a session and
// before it wrote the session's item. The session must stay in the index.
// When it is being created, its item is missing: it is claimed (a
// placeholder added in its place), this instance's add fails, and its next
// attempt indexes it again. When an existing session is being bound, its
// item is live but not yet bound: it is kept.
func TestIndexDropRacesLogin(t *testing.T) {
	for _, bindExisting := range []bool{false, true} {
		t.Run(map[bool]string{false: "create", true: "bind"}[bindExisting], func(t *testing.T) {
			indexRace(t, bindExisting)
		})
	}
}

func indexRace(t *testing.T, bindExisting bool) {
	addr := testenv.MemcachedAddr(t)
	p := testenv.Name(t) + ":"
	other := memcache.New(addr)
	t.Cleanup(func() { _ = other.Close() })
	b, err := New(other, WithPrefix(p))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	user := "racing@example.com"
	bind := func(s *Store, id string, create bool) error {
		d := session.Delta{User: user, Idle: time.Hour}
		if create {
			d.Create = &session.Create{Absolute: time.Hour}
		}
		_, err := s.Apply(ctx, id, d)
		return err
	}
	for range pruneAt - 1 {
		id := sessiontest.NewID(t, user)
		if err := bind(b, id, true); err != nil {
			t.Fatal(err)
		}
		if err := b.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	x, y := sessiontest.NewID(t, user), sessiontest.NewID(t, user)
	if bindExisting { // made before login, bound at login
		if _, err := b.Apply(ctx, x, session.Delta{Create: &session.Create{Absolute: time.Hour}, Idle: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}
	sel := &hookSelector{key: p + "s:" + x, at: 2} // 1: the read; 2: the add or cas
	if err := sel.SetServers(addr); err != nil {
		t.Fatal(err)
	}
	sel.hook = func() {
		if err := bind(b, y, true); err != nil {
			t.Errorf("the other login: %v", err)
		}
	}
	c := memcache.NewFromSelector(sel)
	t.Cleanup(func() { _ = c.Close() })
	a, err := New(c, WithPrefix(p))
	if err != nil {
		t.Fatal(err)
	}
	if err := bind(a, x, !bindExisting); err != nil {
		t.Fatal(err)
	}
	if sel.n < 2 {
		t.Fatal("the hook did not run")
	}
	got, err := b.Sessions(ctx, user)
	slices.Sort(got)
	want := []string{x, y}
	slices.Sort(want)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("Sessions = %v, %v; want %v", got, err, want)
	}
}
