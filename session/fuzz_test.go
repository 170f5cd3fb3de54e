package session

import (
	"bytes"
	"strings"
	"testing"
)

func FuzzTokenID(f *testing.F) {
	good, _ := NewToken("")
	user, _ := NewToken("alice")
	for _, s := range []string{good, user, "", ".", "a.b", good + "=", strings.Repeat("A", 43), "AAAAAAAA." + good, "\x00", good[:42] + "B"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		id, ok := TokenID(tok)
		if !ok {
			if id != "" {
				t.Fatalf("rejected token %q has ID %q", tok, id)
			}
			return
		}
		if len(tok) > MaxTokenLen {
			t.Fatalf("accepted a token of %d bytes", len(tok))
		}
		if id2, _ := TokenID(tok); id2 != id {
			t.Fatal("TokenID is not deterministic")
		}
		if id == tok || strings.Contains(id, tok) {
			t.Fatal("the ID reveals the token")
		}
		if !isB64(strings.Replace(id, ".", "", 1)) {
			t.Fatalf("ID %q has characters outside base64url", id)
		}
		tag, _, hasTag := strings.Cut(tok, ".")
		if hasTag != strings.Contains(id, ".") || (hasTag && HashTag(id) != tag) {
			t.Fatalf("token %q, ID %q: tags differ", tok, id)
		}
		// Canonical: decoding and encoding again gives the token back.
		rnd := tok[strings.IndexByte(tok, '.')+1:]
		raw, err := b64.DecodeString(rnd)
		if err != nil || len(raw) != tokenBytes || b64.EncodeToString(raw) != rnd {
			t.Fatalf("accepted a non-canonical token %q", tok)
		}
	})
}

// FuzzOpenValue: decrypting stored bytes never panics, accepts only what
// was sealed for the same session and key, and round-trips.
func FuzzOpenValue(f *testing.F) {
	m, err := NewManager(nopStore{}, WithEncryption(
		EncryptionKey{Name: "new", Secret: bytes.Repeat([]byte{7}, 32)},
		EncryptionKey{Name: "old", Secret: bytes.Repeat([]byte{8}, 32)}))
	if err != nil {
		f.Fatal(err)
	}
	sealed, _ := m.seal("id", "k", []byte("hello"))
	f.Add([]byte(nil), []byte("hello"))
	f.Add(sealed, []byte(""))
	f.Add([]byte{1, 3, 'n', 'e', 'w'}, []byte{0})
	f.Add([]byte{1, 255}, []byte("x"))
	f.Fuzz(func(t *testing.T, stored, plain []byte) {
		if p, err := m.open("id", "k", stored); err == nil {
			// Only a real seal (the seed's, made in whichever process
			// generated the corpus) opens; a fuzzer cannot forge GCM.
			if string(p) != "hello" {
				t.Fatalf("forged ciphertext %x opened to %q", stored, p)
			}
		}
		c, err := m.seal("id", "k", plain)
		if err != nil {
			t.Fatal(err)
		}
		if p, err := m.open("id", "k", c); err != nil || !bytes.Equal(p, plain) {
			t.Fatalf("round trip: %q, %v", p, err)
		}
		if _, err := m.open("id2", "k", c); err == nil {
			t.Fatal("opened under another session ID")
		}
		if _, err := m.open("id", "k2", c); err == nil {
			t.Fatal("opened under another key")
		}
	})
}
