package consistency

import (
	"net/http"
	"sync"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// Transport is an http.RoundTripper for a client of a service that uses the
// Middleware: it remembers the causal token of the responses it receives
// and sends it on every following request, so that the next call, on
// whichever instance it lands, reads what the previous calls wrote.
//
// Of the tokens it has seen it keeps the one with the latest operation time
// (read without verifying: it has no keys; the service verifies). A request
// that already carries the header is sent as it is.
//
// One Transport is one causal chain: share it between calls made on behalf
// of one user or one workflow. Sharing it more widely is safe but makes
// every call wait for the latest write of all of them. The zero value is
// ready to use; a Transport must not be copied after first use. It is safe
// for concurrent use.
type Transport struct {
	// Base makes the requests; http.DefaultTransport when nil.
	Base http.RoundTripper
	// Header carries the token; DefaultTokenHeader when empty.
	Header string

	mu    sync.Mutex
	token string
	at    bson.Timestamp
	hasAt bool
}

var _ http.RoundTripper = (*Transport)(nil)

func (t *Transport) header() string {
	if t.Header == "" {
		return DefaultTokenHeader
	}
	return t.Header
}

// RoundTrip sends req with the latest token and keeps the response's token.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	h := t.header()
	if tok := t.Token(); tok != "" && req.Header.Get(h) == "" {
		req = req.Clone(req.Context())
		req.Header.Set(h, tok)
	}
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	resp, err := base.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	if tok := resp.Header.Get(h); tok != "" {
		t.SetToken(tok)
	}
	return resp, nil
}

// Token returns the token the next request will carry; empty before any.
func (t *Transport) Token() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.token
}

// SetToken offers tok, for instance one restored from a user's session. It
// replaces the current token unless that one is known to be later (or tok
// has no operation time and the current one has).
func (t *Transport) SetToken(tok string) {
	at, ok := peekOperationTime(tok)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.hasAt && (!ok || at.Compare(t.at) < 0) {
		return
	}
	t.token, t.at, t.hasAt = tok, at, ok
}
