package session

import (
	"bytes"
	"errors"
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

// FuzzOpenValue: decrypting stored bytes, of either version, never panics,
// accepts only what was sealed for the same session and key, and
// round-trips.
func FuzzOpenValue(f *testing.F) {
	keys := WithEncryption(
		EncryptionKey{Name: "new", Secret: bytes.Repeat([]byte{7}, 32)},
		EncryptionKey{Name: "old", Secret: bytes.Repeat([]byte{8}, 32)})
	m, err := NewManager(nopStore{}, keys)
	if err != nil {
		f.Fatal(err)
	}
	m1, err := NewManager(nopStore{}, keys, WithEncryptionV1())
	if err != nil {
		f.Fatal(err)
	}
	s := &Session{m: m}
	sealed, _ := s.seal("id", "k", []byte("hello"))
	sealed1, _ := (&Session{m: m1}).seal("id", "k", []byte("hello"))
	f.Add([]byte(nil), []byte("hello"))
	f.Add(sealed, []byte(""))
	f.Add(sealed1, []byte("x"))
	f.Add(append([]byte{2}, sealed1[1:]...), []byte("y")) // v1 relabelled v2
	f.Add(append([]byte{1}, sealed[1:]...), []byte("z"))  // and the other way
	f.Add([]byte{1, 3, 'n', 'e', 'w'}, []byte{0})
	f.Add([]byte{2, 3, 'o', 'l', 'd'}, []byte{0})
	f.Add([]byte{1, 255}, []byte("x"))
	f.Add([]byte{2, 255}, []byte("x"))
	f.Add([]byte{3, 3, 'n', 'e', 'w'}, []byte("x"))
	f.Fuzz(func(t *testing.T, stored, plain []byte) {
		if p, err := s.open("id", "k", stored); err == nil {
			// Only a real seal (the seeds', made in whichever process
			// generated the corpus) opens; a fuzzer cannot forge GCM.
			if string(p) != "hello" {
				t.Fatalf("forged ciphertext %x opened to %q", stored, p)
			}
		} else if !errors.Is(err, ErrDecrypt) {
			t.Fatalf("open: %v, want ErrDecrypt", err)
		}
		for _, sm := range []*Manager{m, m1} {
			c, err := (&Session{m: sm}).seal("id", "k", plain)
			if err != nil {
				t.Fatal(err)
			}
			if p, err := s.open("id", "k", c); err != nil || !bytes.Equal(p, plain) {
				t.Fatalf("round trip: %q, %v", p, err)
			}
			if _, err := s.open("id2", "k", c); err == nil {
				t.Fatal("opened under another session ID")
			}
			if _, err := s.open("id", "k2", c); err == nil {
				t.Fatal("opened under another key")
			}
		}
	})
}
