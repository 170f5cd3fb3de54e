package consistency

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// FuzzDecodeToken decodes arbitrary strings, and arbitrary bodies under a
// valid signature (so the parser behind the MAC is reached), and checks
// that Decode never panics and that whatever it accepts encodes back to the
// same position.
func FuzzDecodeToken(f *testing.F) {
	now := time.Unix(1_700_000_000, 0)
	c, err := NewTokenCodec([]Key{{ID: "k1", Secret: bytes.Repeat([]byte{1}, 32)}},
		WithClock(func() time.Time { return now }))
	if err != nil {
		f.Fatal(err)
	}
	ct := clusterTimeDoc(bson.Timestamp{T: 1_700_000_000, I: 3}, bytes.Repeat([]byte{0xcd}, 20), 99)
	odd, _ := bson.Marshal(bson.D{{Key: "$clusterTime", Value: int32(1)}})
	for _, tok := range []Token{
		{ClusterTime: ct, OperationTime: &bson.Timestamp{T: 1_700_000_000, I: 2}},
		{ClusterTime: odd},
		{OperationTime: &bson.Timestamp{T: 1, I: 1}},
		{},
	} {
		s, err := c.Encode(tok)
		if err != nil {
			f.Fatal(err)
		}
		f.Add([]byte(s))
		b, _ := base64.RawURLEncoding.DecodeString(s)
		f.Add(b[4 : len(b)-macLen]) // the body, for the signed path
	}
	f.Add([]byte{})
	f.Add([]byte("AQJrMQ"))

	f.Fuzz(func(t *testing.T, data []byte) {
		check := func(s string) {
			tok, err := c.Decode(s)
			if err != nil {
				return
			}
			again, err := c.Encode(tok)
			if err != nil {
				t.Fatalf("accepted token %q does not encode: %v", s, err)
			}
			tok2, err := c.Decode(again)
			if err != nil {
				t.Fatalf("re-encoded token does not decode: %v", err)
			}
			if !bytes.Equal(tok.ClusterTime, tok2.ClusterTime) ||
				(tok.OperationTime == nil) != (tok2.OperationTime == nil) ||
				tok.OperationTime != nil && *tok.OperationTime != *tok2.OperationTime {
				t.Fatalf("round trip changed the token: %+v -> %+v", tok, tok2)
			}
		}
		check(string(data))

		// The same bytes as a body, signed with the codec's key and a
		// current issue time, so they reach the body parser.
		b := []byte{tokenVersion, 2, 'k', '1'}
		b = binary.BigEndian.AppendUint64(b, uint64(now.Unix()))
		if len(data) > 8 {
			b = append(b, data[8:]...) // keep our issue time, fuzz the rest
		}
		b = c.mac(b, c.keys[0].Secret, b)
		check(base64.RawURLEncoding.EncodeToString(b))
		_, _ = peekOperationTime(string(data))
	})
}
