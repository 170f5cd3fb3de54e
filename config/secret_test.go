package config

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// plainConfig is testConfig with the password as a plain string: a Store of
// it hashes whatever string stands for the secret, which is how an
// observer who knows the rest of the configuration tests a guess.
type plainConfig struct {
	Listen   string          `json:"listen" config:"restart"`
	Server   serverConfig    `json:"server"`
	Features map[string]bool `json:"features"`
	Password string          `json:"password"`
	Level    string          `json:"level"`
	A        int             `json:"a"`
	B        int             `json:"b"`
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func newTestStore[T any](t *testing.T, o Options[T]) *Store[T] {
	t.Helper()
	s, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestSecretHashNotTestableByPlainDigest: an observer of the hash who knows
// every other setting must not be able to test a guess at the secret with
// one SHA-256: the hash of the configuration with the guess's plain digest
// in place of the secret must not match.
func TestSecretHashNotTestableByPlainDigest(t *testing.T) {
	layer := map[string]any{"level": "debug", "password": "hunter2"}
	real := newTestStore(t, Options[testConfig]{Defaults: defaults(), Sources: []Source{Map("m", layer)}})

	d := defaults()
	plainDefaults := plainConfig{Listen: d.Listen, Server: d.Server, Level: d.Level}
	guess := func(form string) string {
		s := newTestStore(t, Options[plainConfig]{Defaults: plainDefaults,
			Sources: []Source{Map("m", map[string]any{"level": "debug", "password": form})}})
		return s.Hash()
	}
	for _, form := range []string{"sha256:" + sha256Hex("hunter2"), sha256Hex("hunter2"), "hunter2"} {
		if real.Hash() == guess(form) {
			t.Errorf("the hash %s is the hash of the configuration with the secret as %q: one SHA-256 tests a guess", real.Hash(), form)
		}
	}
	// What the hash covers is the slow derivation named in Secret's doc.
	if got, want := real.Hash(), guess(deriveSecret("password", "hunter2")); got != want {
		t.Errorf("hash %s, want %s (the configuration with the derived secret)", got, want)
	}
}

// TestSecretDerivationIsPinned: the derivation is the documented PBKDF2 and
// never changes by accident, since a change shows as drift between the
// instances of a fleet halfway through a rolling deploy. want is from
// another implementation: Python's hashlib.pbkdf2_hmac("sha256", b"hunter2",
// b"activekit config secret v1\x00db.password", 30000, 32).
func TestSecretDerivationIsPinned(t *testing.T) {
	const want = "pbkdf2-sha256:a16b5a176bdc72be1b6c3686581d38c7f9ebdc61c6a9a0cb2b6b7c68b45c05fe"
	got := deriveSecret("db.password", "hunter2")
	if got != want {
		t.Errorf("deriveSecret = %s, want %s", got, want)
	}
	if deriveSecret("db.password", "hunter2") != got {
		t.Error("the derivation is not deterministic")
	}
	if deriveSecret("cache.password", "hunter2") == got {
		t.Error("one secret at two paths derives the same: the path is not in the salt")
	}
	if deriveSecret("db.password", "") != "" {
		t.Error("an empty secret is derived")
	}
}

type secretsConfig struct {
	DB struct {
		Password Secret `json:"password"`
	} `json:"db"`
	Cache struct {
		Password Secret `json:"password"`
	} `json:"cache"`
	Tokens map[string]Secret `json:"tokens"`
	Level  string            `json:"level"`
}

// TestSecretHashStableAcrossStores: two instances (Stores) with the same
// sources report the same hash, so drift detection works; a rotated secret
// changes it, and rotating back restores it.
func TestSecretHashStableAcrossStores(t *testing.T) {
	layer := func(pw string) map[string]any {
		return map[string]any{
			"db":     map[string]any{"password": pw},
			"cache":  map[string]any{"password": "c"},
			"tokens": map[string]any{"a": "ta", "b": "tb"},
		}
	}
	a := newTestStore(t, Options[secretsConfig]{Sources: []Source{Map("m", layer("pw1"))}})
	b := newTestStore(t, Options[secretsConfig]{Sources: []Source{Map("m", layer("pw1"))}})
	if a.Hash() != b.Hash() {
		t.Fatalf("two stores of one configuration: hashes %s and %s", a.Hash(), b.Hash())
	}
	src := &mutable{m: layer("pw1")}
	c := newTestStore(t, Options[secretsConfig]{Sources: []Source{src}})
	src.set(layer("pw2"))
	if err := c.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c.Hash() == a.Hash() {
		t.Error("a rotated secret left the hash as it was")
	}
	src.set(layer("pw1"))
	if err := c.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c.Hash() != a.Hash() {
		t.Errorf("rotated back: hash %s, want %s", c.Hash(), a.Hash())
	}
	// One value at two paths: swapping the two secrets changes the hash.
	swapped := layer("c")
	swapped["cache"] = map[string]any{"password": "pw1"}
	if d := newTestStore(t, Options[secretsConfig]{Sources: []Source{Map("m", swapped)}}); d.Hash() == a.Hash() {
		t.Error("swapping two secrets between settings left the hash as it was")
	}
}

// TestSecretDerivedOncePerValue: a reload with the same secrets derives
// nothing, a rotation derives the rotated secret only, and the cache holds
// the current configuration's secrets only, however many rotations.
func TestSecretDerivedOncePerValue(t *testing.T) {
	src := &mutable{m: map[string]any{
		"db":     map[string]any{"password": "pw0"},
		"tokens": map[string]any{"a": "ta", "b": "tb"},
	}}
	s := newTestStore(t, Options[secretsConfig]{Sources: []Source{src}})
	if s.secrets.derived != 3 { // the empty cache.password is not derived
		t.Fatalf("derivations at boot %d, want 3", s.secrets.derived)
	}
	for range 3 {
		if err := s.Reload(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	src.set(map[string]any{"db": map[string]any{"password": "pw0"}, "tokens": map[string]any{"a": "ta", "b": "tb"}, "level": "debug"})
	if err := s.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s.secrets.derived != 3 {
		t.Errorf("derivations after reloads with the same secrets %d, want 3", s.secrets.derived)
	}
	for i := 1; i <= 20; i++ {
		src.set(map[string]any{"db": map[string]any{"password": fmt.Sprint("pw", i)}, "tokens": map[string]any{"a": "ta", "b": "tb"}})
		if err := s.Reload(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if s.secrets.derived != 3+20 {
		t.Errorf("derivations after 20 rotations of one secret %d, want 23", s.secrets.derived)
	}
	if n := len(s.secrets.last); n != 3 {
		t.Errorf("the cache holds %d derivations after 20 rotations, want the 3 in use", n)
	}
}

// TestSecretCacheKeptOnRefusal: a change refused after its secrets were
// derived (a restart-only key with it) leaves the cache of the current
// configuration alone, so a reload that goes back to it derives nothing.
func TestSecretCacheKeptOnRefusal(t *testing.T) {
	type cfg struct {
		Password Secret `json:"password"`
		Listen   string `json:"listen" config:"restart"`
	}
	src := &mutable{m: map[string]any{"password": "pw0", "listen": ":1"}}
	s := newTestStore(t, Options[cfg]{Sources: []Source{src}})
	src.set(map[string]any{"password": "pw1", "listen": ":2"})
	if err := s.Reload(context.Background()); !errors.Is(err, ErrRestartRequired) {
		t.Fatalf("reload with a restart-only key: %v, want ErrRestartRequired", err)
	}
	if s.secrets.derived != 2 {
		t.Fatalf("derivations after the refused change %d, want 2", s.secrets.derived)
	}
	src.set(map[string]any{"password": "pw0", "listen": ":1"})
	if err := s.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s.secrets.derived != 2 {
		t.Errorf("derivations after a reload with the current secret %d, want 2", s.secrets.derived)
	}
}

// TestSecretNeverInTexts: no log line (at any level), status message or
// error shows a secret, its plain digest or its derivation, through a
// rotation, a refused change that also rotates the secret, and a recovery;
// the change log names the key that changed.
func TestSecretNeverInTexts(t *testing.T) {
	secrets := []string{"hunter2", "correct horse", "tr0ub4dor"}
	src := &mutable{m: map[string]any{"password": secrets[0]}}
	logs := &recorder{}
	s := newTestStore(t, Options[testConfig]{
		Defaults: defaults(),
		Sources:  []Source{src},
		Logger:   slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	var texts []string
	record := func(err error) {
		st := s.Status(context.Background())
		texts = append(texts, st.Message, st.Hash, fmt.Sprint(st.Err), fmt.Sprint(err), fmt.Sprint(s.LastError()))
		var ce *ChangeError
		if errors.As(err, &ce) {
			texts = append(texts, fmt.Sprint(ce.Keys))
		}
	}
	src.set(map[string]any{"password": secrets[1]})
	record(s.Reload(context.Background()))
	src.set(map[string]any{"password": secrets[2], "listen": ":1"}) // refused: restart-only
	record(s.Reload(context.Background()))
	src.set(map[string]any{"password": secrets[2], "level": "warn"})
	record(s.Reload(context.Background()))
	texts = append(texts, logs.String())
	if !strings.Contains(logs.String(), `"keys":["password"]`) {
		t.Errorf("the change log does not name the secret's key: %s", logs.String())
	}

	for _, sec := range secrets {
		plain := sha256Hex(sec)
		derived := strings.TrimPrefix(deriveSecret("password", sec), "pbkdf2-sha256:")
		for _, leak := range []string{sec, hex.EncodeToString([]byte(sec)), plain[:16], derived[:16]} {
			for _, text := range texts {
				if strings.Contains(strings.ToLower(text), leak) {
					t.Errorf("%q (from secret %q) shown in %s", leak, sec, text)
				}
			}
		}
	}
}
