package consistency_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/consistency"
	"go.mongodb.org/mongo-driver/v2/bson"
)

// fakeClock is a settable clock for token ages.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func key(id string) consistency.Key {
	return consistency.Key{ID: id, Secret: bytes.Repeat([]byte(id[:1]), 32)}
}

func mustCodec(t testing.TB, keys []consistency.Key, opts ...consistency.TokenOption) *consistency.TokenCodec {
	t.Helper()
	c, err := consistency.NewTokenCodec(keys, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// serverClusterTime is a $clusterTime document shaped as MongoDB sends it.
func serverClusterTime(t testing.TB, ts bson.Timestamp) bson.Raw {
	t.Helper()
	raw, err := bson.Marshal(bson.D{{Key: "$clusterTime", Value: bson.D{
		{Key: "clusterTime", Value: ts},
		{Key: "signature", Value: bson.D{
			{Key: "hash", Value: bson.Binary{Data: bytes.Repeat([]byte{0xab}, 20)}},
			{Key: "keyId", Value: int64(7321954839371808769)},
		}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestTokenRoundTrip(t *testing.T) {
	clock := newFakeClock()
	c := mustCodec(t, []consistency.Key{key("k1")}, consistency.WithClock(clock.Now))
	odd, err := bson.Marshal(bson.D{{Key: "$clusterTime", Value: bson.D{{Key: "clusterTime", Value: bson.Timestamp{T: 9, I: 9}}}}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		tok  consistency.Token
	}{
		{"server shaped cluster time and operation time", consistency.Token{
			ClusterTime: serverClusterTime(t, bson.Timestamp{T: 1700000000, I: 42}), OperationTime: &bson.Timestamp{T: 1700000000, I: 41}}},
		{"cluster time of another shape", consistency.Token{ClusterTime: odd, OperationTime: &bson.Timestamp{T: 3, I: 4}}},
		{"operation time only", consistency.Token{OperationTime: &bson.Timestamp{T: 1, I: 2}}},
		{"cluster time only", consistency.Token{ClusterTime: serverClusterTime(t, bson.Timestamp{T: 5, I: 6})}},
		{"nothing", consistency.Token{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := c.Encode(tc.tok)
			if err != nil {
				t.Fatal(err)
			}
			if len(s) > 200 {
				t.Errorf("token is %d characters; want a compact one", len(s))
			}
			if strings.ContainsAny(s, "+/=") {
				t.Errorf("token %q is not unpadded base64url", s)
			}
			got, err := c.Decode(s)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.ClusterTime, tc.tok.ClusterTime) {
				t.Errorf("cluster time = %v, want %v", got.ClusterTime, tc.tok.ClusterTime)
			}
			if (got.OperationTime == nil) != (tc.tok.OperationTime == nil) ||
				got.OperationTime != nil && !got.OperationTime.Equal(*tc.tok.OperationTime) {
				t.Errorf("operation time = %v, want %v", got.OperationTime, tc.tok.OperationTime)
			}
			if !got.IssuedAt.Equal(clock.Now()) {
				t.Errorf("issued at %v, want %v", got.IssuedAt, clock.Now())
			}
		})
	}
}

func TestTokenTamperedIsRejected(t *testing.T) {
	c := mustCodec(t, []consistency.Key{key("k1")})
	s, err := c.Encode(consistency.Token{
		ClusterTime: serverClusterTime(t, bson.Timestamp{T: 10, I: 1}), OperationTime: &bson.Timestamp{T: 10, I: 1}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		for _, bit := range []byte{0x01, 0x80} {
			m := bytes.Clone(b)
			m[i] ^= bit
			_, err := c.Decode(base64.RawURLEncoding.EncodeToString(m))
			if !errors.Is(err, consistency.ErrTokenForged) && !errors.Is(err, consistency.ErrTokenMalformed) {
				t.Fatalf("byte %d bit %#x flipped: Decode = %v, want forged or malformed", i, bit, err)
			}
		}
	}
	for _, bad := range []string{"", "!!!", "AA", s[:len(s)-1], s + "A", strings.Repeat("A", 5000)} {
		if _, err := c.Decode(bad); err == nil {
			t.Errorf("Decode(%q) accepted", bad)
		}
	}
}

func TestTokenForgedKeysAndScope(t *testing.T) {
	signer := mustCodec(t, []consistency.Key{key("k1")})
	s, err := signer.Encode(consistency.Token{OperationTime: &bson.Timestamp{T: 1, I: 1}})
	if err != nil {
		t.Fatal(err)
	}
	// Same key ID, other secret.
	other := mustCodec(t, []consistency.Key{{ID: "k1", Secret: bytes.Repeat([]byte("z"), 32)}})
	if _, err := other.Decode(s); !errors.Is(err, consistency.ErrTokenForged) {
		t.Errorf("other secret: %v, want ErrTokenForged", err)
	}
	// Unknown key ID.
	unknown := mustCodec(t, []consistency.Key{key("k2")})
	if _, err := unknown.Decode(s); !errors.Is(err, consistency.ErrTokenForged) {
		t.Errorf("unknown key: %v, want ErrTokenForged", err)
	}
	// Same key, other scope.
	scoped := mustCodec(t, []consistency.Key{key("k1")}, consistency.WithScope("orders-cluster"))
	if _, err := scoped.Decode(s); !errors.Is(err, consistency.ErrTokenForged) {
		t.Errorf("other scope: %v, want ErrTokenForged", err)
	}
}

func TestTokenExpiry(t *testing.T) {
	clock := newFakeClock()
	c := mustCodec(t, []consistency.Key{key("k1")}, consistency.WithClock(clock.Now),
		consistency.WithMaxAge(time.Minute), consistency.WithClockSkew(5*time.Second))
	s, err := c.Encode(consistency.Token{OperationTime: &bson.Timestamp{T: 1, I: 1}})
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	if _, err := c.Decode(s); err != nil {
		t.Fatalf("at max age: %v", err)
	}
	clock.Advance(time.Second)
	if _, err := c.Decode(s); !errors.Is(err, consistency.ErrTokenExpired) {
		t.Fatalf("past max age: %v, want ErrTokenExpired", err)
	}

	// A token from an instance whose clock is ahead.
	ahead := newFakeClock()
	ahead.Advance(10 * time.Second)
	fut := mustCodec(t, []consistency.Key{key("k1")}, consistency.WithClock(ahead.Now))
	s, err = fut.Encode(consistency.Token{OperationTime: &bson.Timestamp{T: 1, I: 1}})
	if err != nil {
		t.Fatal(err)
	}
	now := newFakeClock()
	c2 := mustCodec(t, []consistency.Key{key("k1")}, consistency.WithClock(now.Now), consistency.WithClockSkew(5*time.Second))
	if _, err := c2.Decode(s); !errors.Is(err, consistency.ErrTokenExpired) {
		t.Fatalf("10s in the future with 5s skew: %v, want ErrTokenExpired", err)
	}
	now.Advance(5 * time.Second)
	if _, err := c2.Decode(s); err != nil {
		t.Fatalf("5s in the future with 5s skew: %v", err)
	}
}

func TestTokenKeyRotation(t *testing.T) {
	tok := consistency.Token{OperationTime: &bson.Timestamp{T: 100, I: 1}}
	old := mustCodec(t, []consistency.Key{key("k1")})
	// Step 1: every instance learns k2 but still signs with k1.
	step1 := mustCodec(t, []consistency.Key{key("k1"), key("k2")})
	// Step 2: k2 signs, k1 still verifies.
	step2 := mustCodec(t, []consistency.Key{key("k2"), key("k1")})
	// Step 3: k1 is dropped.
	step3 := mustCodec(t, []consistency.Key{key("k2")})

	fromOld, _ := old.Encode(tok)
	fromStep2, _ := step2.Encode(tok)
	for _, tc := range []struct {
		name  string
		codec *consistency.TokenCodec
		token string
		ok    bool
	}{
		{"step1 verifies old", step1, fromOld, true},
		{"step1 verifies step2", step1, fromStep2, true},
		{"step2 verifies old", step2, fromOld, true},
		{"old rejects step2", old, fromStep2, false},
		{"step3 verifies step2", step3, fromStep2, true},
		{"step3 rejects old", step3, fromOld, false},
	} {
		_, err := tc.codec.Decode(tc.token)
		if tc.ok && err != nil || !tc.ok && !errors.Is(err, consistency.ErrTokenForged) {
			t.Errorf("%s: Decode = %v", tc.name, err)
		}
	}
	if fromOld == fromStep2 {
		t.Error("the signing key did not change the token")
	}
}

func TestNewTokenCodecValidates(t *testing.T) {
	for name, tc := range map[string]struct {
		keys []consistency.Key
		opts []consistency.TokenOption
	}{
		"no keys":       {nil, nil},
		"empty ID":      {[]consistency.Key{{ID: "", Secret: make([]byte, 32)}}, nil},
		"long ID":       {[]consistency.Key{{ID: strings.Repeat("x", 65), Secret: make([]byte, 32)}}, nil},
		"short secret":  {[]consistency.Key{{ID: "a", Secret: make([]byte, 31)}}, nil},
		"duplicate ID":  {[]consistency.Key{key("a1"), key("a1")}, nil},
		"zero max age":  {[]consistency.Key{key("a1")}, []consistency.TokenOption{consistency.WithMaxAge(0)}},
		"negative skew": {[]consistency.Key{key("a1")}, []consistency.TokenOption{consistency.WithClockSkew(-1)}},
		"nil clock":     {[]consistency.Key{key("a1")}, []consistency.TokenOption{consistency.WithClock(nil)}},
	} {
		if _, err := consistency.NewTokenCodec(tc.keys, tc.opts...); !errors.Is(err, consistency.ErrInvalidOption) {
			t.Errorf("%s: %v, want ErrInvalidOption", name, err)
		}
	}
}

func TestTokenCodecCopiesSecrets(t *testing.T) {
	k := key("k1")
	c := mustCodec(t, []consistency.Key{k})
	s, _ := c.Encode(consistency.Token{OperationTime: &bson.Timestamp{T: 1, I: 1}})
	k.Secret[0] ^= 0xff // the caller reuses its buffer
	if _, err := c.Decode(s); err != nil {
		t.Fatalf("codec was changed through the caller's slice: %v", err)
	}
}
