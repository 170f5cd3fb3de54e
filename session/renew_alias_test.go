package session_test

import (
	"net/http"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestRenewThroughAlias: a request that reaches the session through the
// alias a renewal left (its token is the old one) and renews it again does
// not issue a token of its own; its changes go to the session under the
// renewal's token, as for renewals made at once. Else a planted token
// (fixation) renewed within the grace period of the victim's login got the
// attacker a token to the victim's session that outlives the grace period,
// and turned the victim's own token into an alias that ends with it; and a
// browser whose two renewals' responses came back out of order kept the
// token that ends.
func TestRenewThroughAlias(t *testing.T) {
	store, clock := newMem(t)
	m := newManager(t, store)
	victim := &client{h: m.Middleware(app(t))}
	victim.do(t, "GET", "/put?cart=book")
	planted := victim.cookie.Value // the attacker knows this token
	victim.do(t, "GET", "/login?u=alice")

	attacker := &client{h: m.Middleware(app(t)), cookie: &http.Cookie{Name: session.DefaultCookieName, Value: planted}}
	w := attacker.do(t, "GET", "/renew")
	if w.Code != http.StatusOK {
		t.Fatalf("renewal through the alias: %d %s", w.Code, body(w))
	}
	for _, c := range w.Result().Cookies() {
		if c.Name == session.DefaultCookieName && c.MaxAge >= 0 {
			t.Errorf("a renewal through the alias of a renewed session issued a token of its own")
		}
	}
	clock.Advance(session.DefaultRenewGrace)
	attacker.cookie = &http.Cookie{Name: session.DefaultCookieName, Value: planted}
	for _, c := range w.Result().Cookies() {
		if c.Name == session.DefaultCookieName && c.MaxAge >= 0 {
			attacker.cookie = &http.Cookie{Name: session.DefaultCookieName, Value: c.Value}
		}
	}
	if got := body(attacker.do(t, "GET", "/user")); got != "" {
		t.Errorf("after the grace period, the token got through the alias opens the session of %q", got)
	}
	if got := body(victim.do(t, "GET", "/user")); got != "alice" {
		t.Errorf("after the grace period, the victim's token: user %q, want alice", got)
	}
}
