package session_test

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestRenewUndecryptableAnswer: a renewal (here a login) copies every value
// to the new token, so a value that does not decrypt (sealed under a key
// since dropped, or tampered with in the store) fails it. That is no store
// outage: the default error handler must not answer 503 "store
// unavailable" with a Retry-After that invites retries which fail the same
// way, but 500, as for a session too large.
func TestRenewUndecryptableAnswer(t *testing.T) {
	store, _ := newMem(t)
	k1 := session.EncryptionKey{Name: "old", Secret: bytes.Repeat([]byte{1}, 32)}
	k2 := session.EncryptionKey{Name: "new", Secret: bytes.Repeat([]byte{2}, 32)}
	c := &client{h: newManager(t, store, session.WithEncryption(k1)).Middleware(app(t))}
	c.do(t, "GET", "/put?a=1")
	c.h = newManager(t, store, session.WithEncryption(k2)).Middleware(app(t)) // "old" dropped too early
	w := c.do(t, "GET", "/login?u=alice")
	if w.Code != http.StatusInternalServerError || w.Header().Get("Retry-After") != "" || strings.Contains(body(w), "unavailable") {
		t.Fatalf("renewal of an undecryptable session: %d, Retry-After %q, body %q; want 500 without Retry-After",
			w.Code, w.Header().Get("Retry-After"), body(w))
	}
}
