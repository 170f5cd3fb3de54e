package session_test

import (
	"bytes"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestEncryptionRollingUpgrade: instances that seal in version 1
// (WithEncryptionV1, as during an upgrade) and in version 2 share a store;
// each reads what the other wrote, a value is sealed in the version of the
// instance that last wrote it, and a renewal (here after a key rotation)
// re-seals every value, whichever its version, in version 2 under the new
// ID and the first key, so that the old key can then be dropped.
func TestEncryptionRollingUpgrade(t *testing.T) {
	store, _ := newMem(t)
	k1 := session.EncryptionKey{Name: "2023", Secret: bytes.Repeat([]byte{1}, 32)}
	k2 := session.EncryptionKey{Name: "2024", Secret: bytes.Repeat([]byte{2}, 32)}
	old := newManager(t, store, session.WithEncryption(k1), session.WithEncryptionV1()).Middleware(app(t))
	upgraded := newManager(t, store, session.WithEncryption(k1)).Middleware(app(t))
	stored := func(c *client, key string) (version byte, name string) {
		t.Helper()
		rec, found, err := store.Load(t.Context(), storeID(t, c.cookie.Value), 0)
		if err != nil || !found {
			t.Fatal(found, err)
		}
		d := rec.Values[key].Data
		if len(d) < 2 || len(d) < 2+int(d[1]) {
			t.Fatalf("%q stored as %x", key, d)
		}
		return d[0], string(d[2 : 2+d[1]])
	}
	get := func(c *client, who, key, want string) {
		t.Helper()
		if got := body(c.do(t, "GET", "/get?k="+key)); got != want {
			t.Fatalf("%s read %q: %q, want %q", who, key, got, want)
		}
	}

	c := &client{h: old}
	c.do(t, "GET", "/put?card=4111")
	if v, name := stored(c, "card"); v != 1 || name != "2023" {
		t.Fatalf("old instance sealed in version %d under %q", v, name)
	}
	c.h = upgraded
	get(c, "upgraded instance", "card", "true:4111")
	c.do(t, "GET", "/put?cart=3")
	if v, _ := stored(c, "cart"); v != 2 {
		t.Fatalf("upgraded instance sealed in version %d", v)
	}
	c.h = old
	get(c, "old instance", "cart", "true:3")

	// Rotation: the new key first; a renewal re-seals everything.
	c.h = newManager(t, store, session.WithEncryption(k2, k1)).Middleware(app(t))
	c.do(t, "GET", "/renew")
	for _, key := range []string{"card", "cart"} {
		if v, name := stored(c, key); v != 2 || name != "2024" {
			t.Fatalf("after renewal, %q sealed in version %d under %q", key, v, name)
		}
	}
	c.h = newManager(t, store, session.WithEncryption(k2)).Middleware(app(t))
	get(c, "instance without the old key", "card", "true:4111")
	get(c, "instance without the old key", "cart", "true:3")
}
