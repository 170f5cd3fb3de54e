package session_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/activekit/activekit/session"
)

// prefixCodec is JSON behind a marker, so a value it did not write fails to
// decode, and it counts its calls.
type prefixCodec struct{ marshals, unmarshals atomic.Int32 }

func (c *prefixCodec) Marshal(v any) ([]byte, error) {
	c.marshals.Add(1)
	b, err := json.Marshal(v)
	return append([]byte("P:"), b...), err
}

func (c *prefixCodec) Unmarshal(data []byte, v any) error {
	c.unmarshals.Add(1)
	rest, ok := bytes.CutPrefix(data, []byte("P:"))
	if !ok {
		return errors.New("not written by prefixCodec")
	}
	return json.Unmarshal(rest, v)
}

// WithCodec: values are encoded and decoded by the given codec, and a
// Manager with another codec cannot read them.
func TestWithCodec(t *testing.T) {
	store, _ := newMem(t)
	codec := &prefixCodec{}
	c := &client{h: newManager(t, store, session.WithInsecureCookie(), session.WithCodec(codec)).Middleware(app(t))}
	c.do(t, "GET", "/put?a=x")
	if w := c.do(t, "GET", "/get?k=a"); body(w) != "true:x" {
		t.Fatalf("get = %d %q, want true:x", w.Code, body(w))
	}
	if codec.marshals.Load() == 0 || codec.unmarshals.Load() == 0 {
		t.Fatalf("codec used %d/%d times, want both", codec.marshals.Load(), codec.unmarshals.Load())
	}
	// The default JSON codec reads "P:..." as invalid JSON.
	other := &client{h: newManager(t, store, session.WithInsecureCookie()).Middleware(app(t)), cookie: c.cookie}
	if w := other.do(t, "GET", "/get?k=a"); w.Code != http.StatusInternalServerError {
		t.Fatalf("another codec read the value: %d %q", w.Code, body(w))
	}
}
