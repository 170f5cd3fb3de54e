package session

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"strings"
)

// Token layout.
//
// An anonymous token is 32 bytes from crypto/rand in unpadded base64url (43
// characters). A token bound to a user is the user's tag (see [UserTag]), a
// dot, and such 43 characters. The store ID of a token is the same tag (if
// any), a dot, and the unpadded base64url SHA-256 of the whole token.
const (
	tokenBytes = 32
	randLen    = 43 // base64url of 32 bytes, no padding
	tagLen     = 8  // base64url of 6 bytes
	// MaxTokenLen is the length of the longest valid token.
	MaxTokenLen = tagLen + 1 + randLen
)

var b64 = base64.RawURLEncoding

// NewToken returns a fresh random token; when user is not empty the token
// carries the user's tag, so that its store ID shares a shard with the user's
// index.
func NewToken(user string) (string, error) {
	var b [tokenBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	t := b64.EncodeToString(b[:])
	if user != "" {
		t = UserTag(user) + "." + t
	}
	return t, nil
}

// TokenID checks the form of a token read from a cookie and returns its store
// ID. ok is false for anything that NewToken could not have made; such a
// token must be treated as no session.
func TokenID(token string) (id string, ok bool) {
	tag, ok := tokenTag(token)
	if !ok {
		return "", false
	}
	// One allocation: hash a copy on the stack, encode into another.
	var tb [MaxTokenLen]byte
	sum := sha256.Sum256(tb[:copy(tb[:], token)])
	var out [tagLen + 1 + randLen]byte
	n := 0
	if tag != "" {
		n = copy(out[:], tag)
		out[n] = '.'
		n++
	}
	b64.Encode(out[n:], sum[:])
	return string(out[:n+randLen]), true
}

// tokenTag reports whether token has the form of a token NewToken makes,
// and returns its user tag ("" for an anonymous token).
func tokenTag(token string) (tag string, ok bool) {
	rnd := token
	if i := strings.IndexByte(token, '.'); i >= 0 {
		tag, rnd = token[:i], token[i+1:]
		if len(tag) != tagLen || !isB64(tag) {
			return "", false
		}
	}
	if len(rnd) != randLen || !isB64(rnd) {
		return "", false
	}
	// Reject non-canonical encodings: the last character of 32 bytes carries
	// 2 padding bits that must be zero.
	if strings.IndexByte("AEIMQUYcgkosw048", rnd[randLen-1]) < 0 {
		return "", false
	}
	return tag, true
}

// HashTag returns the part of a store ID that a clustered store must use to
// place the record (a Redis Cluster hash tag): the user tag of a user-bound
// ID, else the whole ID.
func HashTag(id string) string {
	if i := strings.IndexByte(id, '.'); i >= 0 {
		return id[:i]
	}
	return id
}

// UserTag returns the 8-character tag of user: the unpadded base64url of the
// first 6 bytes of a SHA-256 of the user. Tokens and store IDs of the user's
// sessions, and the user's index, carry it.
func UserTag(user string) string {
	sum := sha256.Sum256([]byte("activekit/session user\x00" + user))
	return b64.EncodeToString(sum[:6])
}

func isB64(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}
