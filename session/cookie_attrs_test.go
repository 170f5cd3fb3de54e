package session_test

import (
	"testing"

	"github.com/activekit/activekit/session"
)

// TestNewManagerRefusesBadCookieAttributes: a Domain or Path that a cookie
// cannot carry is refused by NewManager. net/http would otherwise drop the
// Domain (the cookie silently becomes host-only, and is not seen by the
// sibling hosts it was meant for) or the Path's bad bytes, and log it on
// every response.
func TestNewManagerRefusesBadCookieAttributes(t *testing.T) {
	store, _ := newMem(t)
	for _, cc := range []session.CookieConfig{
		{Domain: "https://example.com"},
		{Domain: "example.com:8443"},
		{Domain: "exa mple.com"},
		{Path: "/app;evil"},
		{Path: "/app\n"},
	} {
		if _, err := session.NewManager(store, session.WithCookie(cc)); err == nil {
			t.Errorf("NewManager took cookie Domain %q, Path %q", cc.Domain, cc.Path)
		}
	}
	for _, cc := range []session.CookieConfig{
		{Domain: "example.com"},
		{Domain: ".example.com"},
		{Path: "/app"},
	} {
		if _, err := session.NewManager(store, session.WithCookie(cc)); err != nil {
			t.Errorf("cookie Domain %q, Path %q: %v", cc.Domain, cc.Path, err)
		}
	}
}
