package session_test

import (
	"errors"
	"net/http"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestRenewAliasOutcomeUnknown: a renewal whose Alias fails with an error
// that does not say whether it was made (a reply lost on the way back, a
// timeout while the store ran it). Before, the copy was deleted all the
// same: when the alias had been made, the old token then led to a deleted
// copy, and the session (a login) ended at once. Now the renewal reads the
// old ID: if it leads to the copy, the renewal succeeded and the new token
// is issued; if not, the copy is deleted and the error returned, as before.
func TestRenewAliasOutcomeUnknown(t *testing.T) {
	lost := errors.New("reply lost")
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			hs := &hookStore{Store: b.open(t)()}
			m := newManager(t, hs)
			h := m.Middleware(fleetApp(t, m))
			for _, made := range []bool{true, false} {
				name := "alias made"
				if !made {
					name = "alias not made"
				}
				t.Run(name, func(t *testing.T) {
					c := &client{h: h}
					c.do(t, "GET", "/login?u=alice")
					c.do(t, "GET", "/put?a=1")
					old := c.cookie
					hs.aliasErr = func() (bool, error) { return made, lost }
					w := c.do(t, "GET", "/renew")
					hs.aliasErr = nil
					// /renew ignores Renew's error; the save's error is the
					// middleware's to answer.
					if made {
						wantKeys(t, h, "old token within the grace period", old, map[string]string{"a": "1"})
						if w.Code != http.StatusOK || c.cookie == nil || c.cookie.Value == old.Value {
							t.Fatalf("renewal whose alias was made: %d %q, cookie %v; want 200 and a new cookie", w.Code, body(w), c.cookie)
						}
						wantKeys(t, h, "new token", c.cookie, map[string]string{"a": "1"})
					} else {
						if w.Code == http.StatusOK {
							t.Errorf("renewal whose alias failed answered 200")
						}
						wantKeys(t, h, "old token", old, map[string]string{"a": "1"})
					}
					ids, err := m.UserSessions(t.Context(), "alice")
					if err != nil || len(ids) != 1 {
						t.Errorf("alice's sessions after the renewal: %v, %v; want one", ids, err)
					}
					if err := m.DestroyUser(t.Context(), "alice"); err != nil {
						t.Fatal(err)
					}
				})
			}
		})
	}
}

var _ session.Aliaser = (*hookStore)(nil)
