package consistency

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// Token is the causal position of a user's last request: the cluster time
// and operation time of the MongoDB session that served it. A session
// advanced to a Token reads, on any member and through any instance, what
// that request wrote or read.
type Token struct {
	// ClusterTime is the session's $clusterTime document, as
	// mongo.Session.ClusterTime returns it (signed by the server); nil when
	// the server sends none.
	ClusterTime bson.Raw
	// OperationTime is the session's operation time; nil when there is none.
	OperationTime *bson.Timestamp
	// IssuedAt is when the token was encoded, to the second. Encode sets it.
	IssuedAt time.Time
}

// empty reports whether t carries no causal position.
func (t Token) empty() bool { return len(t.ClusterTime) == 0 && t.OperationTime == nil }

// Errors Decode returns, matched with errors.Is. The middleware ignores a
// token that fails with any of them, and counts it.
var (
	// ErrTokenMalformed reports a token that is not one this package
	// encodes: bad base64, an unknown version, bad lengths or trailing data.
	ErrTokenMalformed = errors.New("consistency: malformed causal token")
	// ErrTokenForged reports a token whose key ID is not one of the keys or
	// whose signature does not verify.
	ErrTokenForged = errors.New("consistency: causal token signature does not verify")
	// ErrTokenExpired reports a token issued longer ago than the maximum
	// age, or further in the future than the allowed clock skew.
	ErrTokenExpired = errors.New("consistency: causal token expired")
)

// Key is an HMAC-SHA256 key with the ID written into every token it signs.
type Key struct {
	// ID names the key in the token: 1 to 64 bytes, unique in a key list.
	ID string
	// Secret is the HMAC key: at least 32 random bytes.
	Secret []byte
}

// Token codec limits and defaults.
const (
	// DefaultMaxAge is how long a token is accepted after it was issued.
	// Replication lag is seconds; a token older than this carries a
	// position every member has long passed.
	DefaultMaxAge = time.Hour
	// DefaultClockSkew is how far in the future a token's issue time may
	// be, for instances whose clocks disagree.
	DefaultClockSkew = time.Minute
	// MinSecretLen is the shortest Key.Secret accepted.
	MinSecretLen = 32
	maxKeyIDLen  = 64
	maxTokenLen  = 2048 // encoded; a real token is about 130 characters
	macLen       = sha256.Size
	tokenVersion = 1
)

// TokenCodec signs and verifies causal tokens. It is safe for concurrent use.
//
// The wire form is base64url (no padding) of
//
//	version(1) | len(keyID)(1) | keyID | issuedAt(8, Unix seconds) |
//	flags(1) | [operationTime T(4) I(4)] | [clusterTime] | HMAC-SHA256(32)
//
// where the cluster time is stored compactly (timestamp, signature hash and
// key ID) when it has the shape MongoDB sends, and as its BSON bytes
// otherwise. The MAC covers the scope (see WithScope) and every byte before
// it.
type TokenCodec struct {
	keys   []Key // keys[0] signs
	byID   map[string][]byte
	maxAge time.Duration
	skew   time.Duration
	now    func() time.Time
	scope  []byte
}

// TokenOption configures a TokenCodec.
type TokenOption interface{ applyToken(*TokenCodec) error }

type tokenOptionFunc func(*TokenCodec) error

func (f tokenOptionFunc) applyToken(c *TokenCodec) error { return f(c) }

// WithMaxAge sets how long after issue a token is accepted; DefaultMaxAge
// by default. It must be positive.
func WithMaxAge(d time.Duration) TokenOption {
	return tokenOptionFunc(func(c *TokenCodec) error {
		if d <= 0 {
			return fmt.Errorf("%w: max age %v is not positive", ErrInvalidOption, d)
		}
		c.maxAge = d
		return nil
	})
}

// WithClockSkew sets how far in the future a token's issue time may be;
// DefaultClockSkew by default. It must not be negative.
func WithClockSkew(d time.Duration) TokenOption {
	return tokenOptionFunc(func(c *TokenCodec) error {
		if d < 0 {
			return fmt.Errorf("%w: clock skew %v is negative", ErrInvalidOption, d)
		}
		c.skew = d
		return nil
	})
}

// WithClock sets the clock used to stamp and age tokens; time.Now by
// default.
func WithClock(now func() time.Time) TokenOption {
	return tokenOptionFunc(func(c *TokenCodec) error {
		if now == nil {
			return fmt.Errorf("%w: nil clock", ErrInvalidOption)
		}
		c.now = now
		return nil
	})
}

// WithScope binds tokens to a scope, such as the name of the MongoDB
// deployment: a token signed under another scope does not verify. Services
// that share keys but not a deployment should set it, because a cluster time
// from one deployment is refused by another.
func WithScope(scope string) TokenOption {
	return tokenOptionFunc(func(c *TokenCodec) error { c.scope = []byte(scope); return nil })
}

// NewTokenCodec returns a codec that signs with keys[0] and verifies with
// any of keys. To rotate, deploy a list with the new key last (every
// instance verifies it), then move it first (it signs), then drop the old
// key once DefaultMaxAge (or WithMaxAge) has passed.
func NewTokenCodec(keys []Key, opts ...TokenOption) (*TokenCodec, error) {
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: no keys", ErrInvalidOption)
	}
	c := &TokenCodec{
		byID:   make(map[string][]byte, len(keys)),
		maxAge: DefaultMaxAge,
		skew:   DefaultClockSkew,
		now:    time.Now,
	}
	for _, k := range keys {
		switch {
		case len(k.ID) == 0 || len(k.ID) > maxKeyIDLen:
			return nil, fmt.Errorf("%w: key ID %q must be 1 to %d bytes", ErrInvalidOption, k.ID, maxKeyIDLen)
		case len(k.Secret) < MinSecretLen:
			return nil, fmt.Errorf("%w: key %q has a %d-byte secret; at least %d are needed", ErrInvalidOption, k.ID, len(k.Secret), MinSecretLen)
		}
		if _, dup := c.byID[k.ID]; dup {
			return nil, fmt.Errorf("%w: duplicate key ID %q", ErrInvalidOption, k.ID)
		}
		secret := bytes.Clone(k.Secret)
		c.byID[k.ID] = secret
		c.keys = append(c.keys, Key{ID: k.ID, Secret: secret})
	}
	for _, o := range opts {
		if err := o.applyToken(c); err != nil {
			return nil, err
		}
	}
	return c, nil
}

const (
	flagOperationTime = 1 << iota
	flagClusterTimeCompact
	flagClusterTimeRaw
)

// Encode signs t with the first key, stamped with the codec's clock (t's
// own IssuedAt is ignored).
func (c *TokenCodec) Encode(t Token) (string, error) {
	k := c.keys[0]
	b := make([]byte, 0, 128)
	b = append(b, tokenVersion, byte(len(k.ID)))
	b = append(b, k.ID...)
	b = binary.BigEndian.AppendUint64(b, uint64(c.now().Unix()))
	var flags byte
	if t.OperationTime != nil {
		flags |= flagOperationTime
	}
	var ct []byte
	if len(t.ClusterTime) > 0 {
		if cb, ok := compactClusterTime(t.ClusterTime); ok {
			flags |= flagClusterTimeCompact
			ct = cb
		} else {
			if err := t.ClusterTime.Validate(); err != nil {
				return "", fmt.Errorf("consistency: encoding token: cluster time: %w", err)
			}
			if len(t.ClusterTime) > 1024 {
				return "", fmt.Errorf("consistency: encoding token: cluster time of %d bytes is too large", len(t.ClusterTime))
			}
			flags |= flagClusterTimeRaw
			ct = binary.BigEndian.AppendUint16(nil, uint16(len(t.ClusterTime)))
			ct = append(ct, t.ClusterTime...)
		}
	}
	b = append(b, flags)
	if t.OperationTime != nil {
		b = binary.BigEndian.AppendUint32(b, t.OperationTime.T)
		b = binary.BigEndian.AppendUint32(b, t.OperationTime.I)
	}
	b = append(b, ct...)
	b = c.mac(b, k.Secret, b)
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// mac appends to dst the HMAC of the scope and msg under secret.
func (c *TokenCodec) mac(dst, secret, msg []byte) []byte {
	h := hmac.New(sha256.New, secret)
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(c.scope)))
	h.Write(n[:])
	h.Write(c.scope)
	h.Write(msg)
	return h.Sum(dst)
}

// Decode verifies s and returns its token. It fails with ErrTokenMalformed,
// ErrTokenForged or ErrTokenExpired; nothing in a token is trusted until
// its signature verifies.
func (c *TokenCodec) Decode(s string) (Token, error) {
	if len(s) > maxTokenLen {
		return Token{}, fmt.Errorf("%w: %d characters", ErrTokenMalformed, len(s))
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return Token{}, fmt.Errorf("%w: %w", ErrTokenMalformed, err)
	}
	if len(b) < 2+macLen || b[0] != tokenVersion {
		return Token{}, fmt.Errorf("%w: bad header", ErrTokenMalformed)
	}
	idLen := int(b[1])
	if idLen == 0 || 2+idLen+macLen > len(b) {
		return Token{}, fmt.Errorf("%w: bad key ID length", ErrTokenMalformed)
	}
	secret, ok := c.byID[string(b[2:2+idLen])]
	if !ok {
		return Token{}, fmt.Errorf("%w: unknown key ID", ErrTokenForged)
	}
	msg, sig := b[:len(b)-macLen], b[len(b)-macLen:]
	if !hmac.Equal(sig, c.mac(nil, secret, msg)) {
		return Token{}, ErrTokenForged
	}
	t, err := parseTokenBody(msg[2+idLen:])
	if err != nil {
		return Token{}, err
	}
	now := c.now()
	switch {
	case t.IssuedAt.After(now.Add(c.skew)):
		return Token{}, fmt.Errorf("%w: issued %v in the future", ErrTokenExpired, t.IssuedAt.Sub(now))
	case now.Sub(t.IssuedAt) > c.maxAge:
		return Token{}, fmt.Errorf("%w: issued %v ago", ErrTokenExpired, now.Sub(t.IssuedAt))
	}
	return t, nil
}

// parseTokenBody parses what follows the key ID, strictly: every byte is
// accounted for.
func parseTokenBody(b []byte) (Token, error) {
	var t Token
	if len(b) < 9 {
		return t, fmt.Errorf("%w: short body", ErrTokenMalformed)
	}
	iat := binary.BigEndian.Uint64(b)
	if iat > 1<<40 { // year 36812: no clock we issue with
		return t, fmt.Errorf("%w: bad issue time", ErrTokenMalformed)
	}
	t.IssuedAt = time.Unix(int64(iat), 0)
	flags := b[8]
	b = b[9:]
	if flags&^(flagOperationTime|flagClusterTimeCompact|flagClusterTimeRaw) != 0 ||
		flags&flagClusterTimeCompact != 0 && flags&flagClusterTimeRaw != 0 {
		return t, fmt.Errorf("%w: bad flags %#x", ErrTokenMalformed, flags)
	}
	if flags&flagOperationTime != 0 {
		if len(b) < 8 {
			return t, fmt.Errorf("%w: short operation time", ErrTokenMalformed)
		}
		t.OperationTime = &bson.Timestamp{T: binary.BigEndian.Uint32(b), I: binary.BigEndian.Uint32(b[4:])}
		b = b[8:]
	}
	switch {
	case flags&flagClusterTimeCompact != 0:
		ct, rest, err := expandClusterTime(b)
		if err != nil {
			return t, err
		}
		t.ClusterTime, b = ct, rest
	case flags&flagClusterTimeRaw != 0:
		if len(b) < 2 {
			return t, fmt.Errorf("%w: short cluster time", ErrTokenMalformed)
		}
		n := int(binary.BigEndian.Uint16(b))
		b = b[2:]
		if n > len(b) {
			return t, fmt.Errorf("%w: short cluster time", ErrTokenMalformed)
		}
		raw := bson.Raw(bytes.Clone(b[:n]))
		if err := raw.Validate(); err != nil {
			return t, fmt.Errorf("%w: cluster time: %w", ErrTokenMalformed, err)
		}
		t.ClusterTime, b = raw, b[n:]
	}
	if len(b) != 0 {
		return t, fmt.Errorf("%w: %d trailing bytes", ErrTokenMalformed, len(b))
	}
	return t, nil
}

// clusterTimeDoc builds the document MongoDB sends as $clusterTime.
func clusterTimeDoc(ts bson.Timestamp, hash []byte, keyID int64) bson.Raw {
	d := bson.D{{Key: "$clusterTime", Value: bson.D{
		{Key: "clusterTime", Value: ts},
		{Key: "signature", Value: bson.D{
			{Key: "hash", Value: bson.Binary{Subtype: 0, Data: hash}},
			{Key: "keyId", Value: keyID},
		}},
	}}}
	raw, err := bson.Marshal(d)
	if err != nil {
		return nil // unreachable: every value marshals
	}
	return raw
}

// compactClusterTime returns the compact form of ct, T(4) I(4) keyId(8)
// len(hash)(1) hash, when rebuilding the document from it gives back exactly
// ct's bytes.
func compactClusterTime(ct bson.Raw) ([]byte, bool) {
	var d struct {
		CT struct {
			ClusterTime bson.Timestamp `bson:"clusterTime"`
			Signature   struct {
				Hash  bson.Binary `bson:"hash"`
				KeyID int64       `bson:"keyId"`
			} `bson:"signature"`
		} `bson:"$clusterTime"`
	}
	if err := bson.Unmarshal(ct, &d); err != nil || len(d.CT.Signature.Hash.Data) > 255 {
		return nil, false
	}
	sig := d.CT.Signature
	if !bytes.Equal(clusterTimeDoc(d.CT.ClusterTime, sig.Hash.Data, sig.KeyID), ct) || sig.Hash.Subtype != 0 {
		return nil, false
	}
	b := make([]byte, 0, 17+len(sig.Hash.Data))
	b = binary.BigEndian.AppendUint32(b, d.CT.ClusterTime.T)
	b = binary.BigEndian.AppendUint32(b, d.CT.ClusterTime.I)
	b = binary.BigEndian.AppendUint64(b, uint64(sig.KeyID))
	b = append(b, byte(len(sig.Hash.Data)))
	return append(b, sig.Hash.Data...), true
}

// expandClusterTime parses a compact cluster time from the front of b.
func expandClusterTime(b []byte) (bson.Raw, []byte, error) {
	if len(b) < 17 || len(b) < 17+int(b[16]) {
		return nil, nil, fmt.Errorf("%w: short cluster time", ErrTokenMalformed)
	}
	ts := bson.Timestamp{T: binary.BigEndian.Uint32(b), I: binary.BigEndian.Uint32(b[4:])}
	keyID := int64(binary.BigEndian.Uint64(b[8:]))
	n := int(b[16])
	hash := bytes.Clone(b[17 : 17+n])
	return clusterTimeDoc(ts, hash, keyID), b[17+n:], nil
}

// peekOperationTime returns the operation time in an encoded token without
// verifying it, to order tokens on a client that has no keys. It is never
// used to trust a token.
func peekOperationTime(s string) (bson.Timestamp, bool) {
	if len(s) > maxTokenLen {
		return bson.Timestamp{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 2+macLen || b[0] != tokenVersion {
		return bson.Timestamp{}, false
	}
	idLen := int(b[1])
	if 2+idLen+macLen > len(b) {
		return bson.Timestamp{}, false
	}
	t, err := parseTokenBody(b[2+idLen : len(b)-macLen])
	if err != nil || t.OperationTime == nil {
		return bson.Timestamp{}, false
	}
	return *t.OperationTime, true
}
