package session

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
)

var (
	key2023 = EncryptionKey{Name: "2023", Secret: bytes.Repeat([]byte{8}, 32)}
	key2024 = EncryptionKey{Name: "2024", Secret: bytes.Repeat([]byte{7}, 32)}
)

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// testSession is a Session of a Manager with opts, for sealing and opening.
func testSession(t *testing.T, opts ...Option) *Session {
	t.Helper()
	m, err := NewManager(nopStore{}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return &Session{m: m}
}

// v1Vector was sealed by this package before version 2 (commit e491f80,
// random nonce 78e6...bc7c) under key2023, for session "sessionid" and key
// "cart": instances of that version write it.
const v1Vector = "0104323032337" + "8e66f424e1add802f70ba075541b6d1c7bc3a23adbdd943715075567874232dbd44c294d09c4c"

// v2Vectors were computed apart from this package (hkdf.Key with no salt
// and info "activekit/session v2 key\x00" + ID, crypto/aes, crypto/cipher),
// under key2024, nonce 12 × 0xab, for key "cart" and value {"items":3}.
var v2Vectors = []struct{ id, sessionKey, sealed string }{
	{"sessionA", "313db068a188c681eda7fb56a12f883a3b4f9de7feff3cab660372ae8ac4a459",
		"020432303234abababababababababababab96e66825ecd1cda6df3fb96c4e756dde77462561d80abe1c0e1666"},
	{"sessionB", "a290efe746fbc36c2bad78693890e24afcdb62dcfbc8aced10e2535a378bdd8c",
		"020432303234abababababababababababab37672ad8ff5641c70bfa87ef8d576b1eb4f99497b855011e0a0529"},
}

// TestSealV2KnownAnswer: a fixed key, session ID and nonce seal to fixed
// bytes, so a change to the derivation or the layout, which would make
// every stored value unreadable, is caught; two sessions under the same
// key get different keys.
func TestSealV2KnownAnswer(t *testing.T) {
	s := testSession(t, WithEncryption(key2024, key2023))
	nonce := bytes.Repeat([]byte{0xab}, gcmNonceSize)
	for _, v := range v2Vectors {
		k, err := s.m.keys["2024"].sessionKey(v.id)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(k); got != v.sessionKey {
			t.Errorf("session %s: key %s, want %s", v.id, got, v.sessionKey)
		}
		got, err := s.sealNonce(v.id, "cart", nonce, []byte(`{"items":3}`))
		if err != nil {
			t.Fatal(err)
		}
		if hex.EncodeToString(got) != v.sealed {
			t.Errorf("session %s: sealed %x, want %s", v.id, got, v.sealed)
		}
		p, err := s.open(v.id, "cart", mustHex(t, v.sealed))
		if err != nil || string(p) != `{"items":3}` {
			t.Errorf("session %s: opened %q, %v", v.id, p, err)
		}
	}
	if v2Vectors[0].sessionKey == v2Vectors[1].sessionKey {
		t.Fatal("two sessions share a key")
	}
}

// TestSealV1KnownAnswer: a value sealed before version 2 opens, and
// WithEncryptionV1 seals as that version did.
func TestSealV1KnownAnswer(t *testing.T) {
	vec := mustHex(t, v1Vector)
	for _, keys := range [][]EncryptionKey{{key2023}, {key2024, key2023}} {
		s := testSession(t, WithEncryption(keys...))
		p, err := s.open("sessionid", "cart", vec)
		if err != nil || string(p) != `{"items":3}` {
			t.Fatalf("keys %v: v1 value opened to %q, %v", keys[0].Name, p, err)
		}
		for _, bad := range [][2]string{{"sessionid2", "cart"}, {"sessionid", "cart2"}} {
			if _, err := s.open(bad[0], bad[1], vec); !errors.Is(err, ErrDecrypt) {
				t.Errorf("v1 value opened as session %q key %q: %v", bad[0], bad[1], err)
			}
		}
	}
	s := testSession(t, WithEncryption(key2023), WithEncryptionV1())
	nonce := vec[2+len("2023") : 2+len("2023")+gcmNonceSize]
	got, err := s.sealNonce("sessionid", "cart", nonce, []byte(`{"items":3}`))
	if err != nil || !bytes.Equal(got, vec) {
		t.Fatalf("WithEncryptionV1 sealed %x, %v; want %s", got, err, v1Vector)
	}
}

// TestSealV2RoundTrip: values are sealed in version 2 under the first key
// and open again, in the session they were sealed for only; the size a seal
// adds is the one the session limit counts.
func TestSealV2RoundTrip(t *testing.T) {
	s := testSession(t, WithEncryption(key2024, key2023))
	for _, plain := range []string{"", "x", `{"items":3}`, string(bytes.Repeat([]byte{'a'}, 1000))} {
		c, err := s.seal("sessionA", "cart", []byte(plain))
		if err != nil {
			t.Fatal(err)
		}
		if c[0] != sealV2 || string(c[2:2+c[1]]) != "2024" {
			t.Fatalf("sealed as version %d under %q, want 2 under 2024", c[0], c[2:2+c[1]])
		}
		if len(c)-len(plain) != s.m.sealExtra {
			t.Fatalf("a seal adds %d bytes, the limit counts %d", len(c)-len(plain), s.m.sealExtra)
		}
		if bytes.Contains(c, []byte("items")) {
			t.Fatal("sealed value holds the clear text")
		}
		p, err := s.open("sessionA", "cart", c)
		if err != nil || string(p) != plain {
			t.Fatalf("opened %q, %v; want %q", p, err, plain)
		}
	}
}

// TestSealV2Bound: a version 2 value copied to another session, to another
// key, read with another secret under the same key name, or relabelled
// version 1, does not open.
func TestSealV2Bound(t *testing.T) {
	s := testSession(t, WithEncryption(key2024, key2023))
	c, err := s.seal("sessionA", "cart", []byte(`{"items":3}`))
	if err != nil {
		t.Fatal(err)
	}
	other := testSession(t, WithEncryption(EncryptionKey{Name: "2024", Secret: bytes.Repeat([]byte{9}, 32)}))
	relabelled := append([]byte{sealV1}, c[1:]...)
	for name, tc := range map[string]struct {
		s       *Session
		id, key string
		data    []byte
	}{
		"another session":    {s, "sessionB", "cart", c},
		"another key":        {s, "sessionA", "basket", c},
		"another secret":     {other, "sessionA", "cart", c},
		"relabelled v1":      {s, "sessionA", "cart", relabelled},
		"unknown version":    {s, "sessionA", "cart", append([]byte{3}, c[1:]...)},
		"truncated":          {s, "sessionA", "cart", c[:len(c)-1]},
		"only the key name":  {s, "sessionA", "cart", c[:2+4]},
		"unknown key name":   {s, "sessionA", "cart", append([]byte{sealV2, 4}, append([]byte("2022"), c[6:]...)...)},
		"name past the end":  {s, "sessionA", "cart", []byte{sealV2, 200, '2'}},
		"another session v2": {testSession(t, WithEncryption(key2024)), "sessionA2", "cart", c},
	} {
		if _, err := tc.s.open(tc.id, tc.key, tc.data); !errors.Is(err, ErrDecrypt) {
			t.Errorf("%s: %v, want ErrDecrypt", name, err)
		}
	}
	// The same session with only the second key configured first still
	// opens it: the derivation does not depend on the key's rank.
	if _, err := testSession(t, WithEncryption(key2023, key2024)).open("sessionA", "cart", c); err != nil {
		t.Fatal(err)
	}
}

// TestKeyRotationAcrossVersions: during a rolling upgrade that also
// rotates keys, values sealed in either version under either key open
// where both keys are configured, and dropping a key leaves its values of
// both versions unreadable.
func TestKeyRotationAcrossVersions(t *testing.T) {
	sealers := []struct {
		name    string
		s       *Session
		version byte
		key     string
	}{
		{"not upgraded", testSession(t, WithEncryption(key2023), WithEncryptionV1()), sealV1, "2023"},
		{"not upgraded, rotated", testSession(t, WithEncryption(key2024, key2023), WithEncryptionV1()), sealV1, "2024"},
		{"upgraded", testSession(t, WithEncryption(key2023)), sealV2, "2023"},
		{"upgraded, rotated", testSession(t, WithEncryption(key2024, key2023)), sealV2, "2024"},
	}
	both := testSession(t, WithEncryption(key2024, key2023))
	dropped := testSession(t, WithEncryption(key2024))
	for _, sl := range sealers {
		c, err := sl.s.seal("sessionA", "cart", []byte(sl.name))
		if err != nil {
			t.Fatal(err)
		}
		if c[0] != sl.version || string(c[2:2+c[1]]) != sl.key {
			t.Fatalf("%s: sealed as version %d under %q, want %d under %q", sl.name, c[0], c[2:2+c[1]], sl.version, sl.key)
		}
		if p, err := both.open("sessionA", "cart", c); err != nil || string(p) != sl.name {
			t.Errorf("%s, opened under both keys: %q, %v", sl.name, p, err)
		}
		_, err = dropped.open("sessionA", "cart", c)
		if sl.key == "2023" && !errors.Is(err, ErrDecrypt) {
			t.Errorf("%s, opened after 2023 was dropped: %v, want ErrDecrypt", sl.name, err)
		}
		if sl.key == "2024" && err != nil {
			t.Errorf("%s, opened after 2023 was dropped: %v", sl.name, err)
		}
	}
}

// TestAEADCache: a Session derives a session's AEAD once, keeps one per
// session ID and key name, and still opens a session's values after
// sealing for more sessions than it holds.
func TestAEADCache(t *testing.T) {
	s := testSession(t, WithEncryption(key2024, key2023))
	k := s.m.keys["2024"]
	a, err := s.cache().aead(k, "sessionA", "2024")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := s.cache().aead(k, "sessionA", "2024"); b != a {
		t.Fatal("derived again for the same session")
	}
	if b, _ := s.cache().aead(k, "sessionB", "2024"); b == a {
		t.Fatal("another session got the same AEAD")
	}
	if b, _ := s.cache().aead(s.m.keys["2023"], "sessionA", "2023"); b == a {
		t.Fatal("another key got the same AEAD")
	}
	c, err := s.seal("sessionA", "k", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 * len(s.aeads.slot) {
		if _, err := s.seal(fmt.Sprint("session", i), "k", nil); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := s.open("sessionA", "k", c); err != nil || string(p) != "v" {
		t.Fatalf("after eviction: %q, %v", p, err)
	}
}

// BenchmarkSealOpen: sealing and opening one value in a new Session (a
// request), so version 2 includes deriving the session's key.
func BenchmarkSealOpen(b *testing.B) {
	for _, bc := range []struct {
		name string
		opts []Option
	}{
		{"v1", []Option{WithEncryption(key2024), WithEncryptionV1()}},
		{"v2", []Option{WithEncryption(key2024)}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			m, err := NewManager(nopStore{}, bc.opts...)
			if err != nil {
				b.Fatal(err)
			}
			plain := []byte(`{"cart":[1,2,3],"user":"alice"}`)
			b.ReportAllocs()
			for b.Loop() {
				s := &Session{m: m}
				c, err := s.seal("0123456789abcdef0123456789abcdef0123456789a", "cart", plain)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := s.open("0123456789abcdef0123456789abcdef0123456789a", "cart", c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
