package config

import (
	"crypto/pbkdf2"
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
// The configuration hash covers a Secret, so that a rotated secret shows as
// drift across the fleet, through a deliberately slow derivation of it:
// PBKDF2-HMAC-SHA256 with 30,000 iterations, salted with a label naming
// activekit config and the setting's dotted path ("db.password"). The
// derivation has no per-instance salt, so every instance, and every
// restart, of a fleet derives the same value from the same secret, which is
// what makes the hash comparable across the fleet. A Store derives each
// distinct secret once and keeps only the derivations of its latest
// configuration, so a reload with the same secrets costs nothing and a
// rotation costs one derivation (a few milliseconds).
//
// What an observer of the hash (the config.hash metric attribute, health
// output, logs, Consul service meta) can learn: whether two instances run
// the same configuration, and whether it changed, secrets included. What
// the observer cannot learn: the secret, its length, or a plain digest of
// it. An observer who knows every other setting can still test guesses at
// a secret offline against the hash, but each guess costs a full PBKDF2
// derivation (what a password hash costs, not the nanoseconds of one
// SHA-256), and the salt makes tables of guesses computed for plain
// digests, for other systems or for another setting useless here. That
// slows guessing; it does not make a weak secret strong, so a secret
// should be random, not a word. Since the salt is the same everywhere, an
// observer can also tell that two deployments with otherwise identical
// configurations hold the same secret at the same path. An empty Secret is
// not derived: it hashes as the empty string, so that an unset secret
// costs nothing (whether it is empty is one guess anyway).
//
// Nothing the package prints shows a secret or any digest of it: change
// logs and errors name the keys that changed, never their values.
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

// The derivation of a secret for the configuration hash. Changing any of
// these changes every hash with a secret in it, which a fleet halfway
// through a rolling deploy would show as drift.
const (
	secretKDFIterations = 30_000
	secretKDFSalt       = "activekit config secret v1\x00" // then the setting's dotted path
	secretKDFKeyLen     = 32
)

// deriveSecret is the form of the secret v at the dotted path in the
// canonical configuration (which is hashed and diffed, never printed).
func deriveSecret(path, v string) string {
	if v == "" {
		return ""
	}
	k, err := pbkdf2.Key(sha256.New, v, []byte(secretKDFSalt+path), secretKDFIterations, secretKDFKeyLen)
	if err != nil { // only for parameters out of FIPS 140-3 bounds, which these are not
		panic("config: deriving a secret: " + err.Error())
	}
	return "pbkdf2-sha256:" + hex.EncodeToString(k)
}

// secretCache derives each distinct (path, value) once. It keeps only the
// derivations used by the latest canonical form, so secrets rotated away
// leave it, and it holds no more entries than the configuration has
// secrets. It is not safe for concurrent use: a Store uses it in build
// only, which applyMu serialises.
type secretCache struct {
	last    map[secretKey]string // the derivations of the previous form
	cur     map[secretKey]string // those of the form being built
	derived int                  // derivations computed, for tests
}

type secretKey struct{ path, value string }

// derive returns the canonical form of s at path, from the cache when it
// was derived for the previous form.
func (c *secretCache) derive(path string, s Secret) string {
	if s.v == "" {
		return ""
	}
	k := secretKey{path, s.v}
	if d, ok := c.cur[k]; ok {
		return d
	}
	d, ok := c.last[k]
	if !ok {
		d = deriveSecret(path, s.v)
		c.derived++
	}
	if c.cur == nil {
		c.cur = map[secretKey]string{}
	}
	c.cur[k] = d
	return d
}

// done ends one canonical form: when kept (its configuration is now the
// current one), its derivations become the cache and those it did not use
// are dropped; else the cache stays as it was.
func (c *secretCache) done(keep bool) {
	if keep {
		c.last = c.cur
	}
	c.cur = nil
}
