package config

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
)

// redacted is what a Secret prints as, whatever the verb.
const redacted = "[REDACTED]"

// Secret is a configuration value that must never be printed: a password,
// a token, a key. It decodes from a string in any source, and prints as
// [REDACTED] through fmt (every verb, %#v included), encoding/json and
// log/slog. Reveal returns the value for the one place that needs it.
//
// The configuration hash covers a Secret through its SHA-256 digest, so a
// rotated secret shows as drift across the fleet without the hash preimage
// holding the secret in clear.
type Secret struct{ v string }

// NewSecret returns a Secret holding s.
func NewSecret(s string) Secret { return Secret{s} }

// Reveal returns the secret value.
func (s Secret) Reveal() string { return s.v }

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.v == "" }

// String returns "[REDACTED]".
func (s Secret) String() string { return redacted }

// GoString returns "[REDACTED]", for %#v.
func (s Secret) GoString() string { return redacted }

// Format prints "[REDACTED]" for every verb.
func (s Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// LogValue returns "[REDACTED]" for log/slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalJSON returns "[REDACTED]" as a JSON string.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText returns "[REDACTED]", so that YAML, TOML and map keys do not
// leak the value either.
func (s Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// UnmarshalText sets the secret to text.
func (s *Secret) UnmarshalText(text []byte) error {
	s.v = string(text)
	return nil
}

// digest is the form of the secret in the configuration hash and diff.
func (s Secret) digest() string {
	sum := sha256.Sum256([]byte(s.v))
	return "sha256:" + hex.EncodeToString(sum[:])
}
