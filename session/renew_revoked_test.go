package session_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"

	"github.com/activekit/activekit/session"
)

// TestRenewRevokedSession: a session revoked (DestroyUser) while a request
// that renews it runs is not copied to a new ID: before, the copy, bound to
// the user at the new revocation epoch, was in the user's index until the
// failed alias had it deleted, and stayed there, live, when that delete
// failed.
func TestRenewRevokedSession(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			open := b.open(t)
			hs := &hookStore{Store: open()}
			m := newManager(t, hs)
			h := m.Middleware(fleetApp(t, m))
			login := func(t *testing.T) *client {
				c := &client{h: h}
				c.do(t, "GET", "/login?u=alice")
				if ids, err := m.UserSessions(t.Context(), "alice"); err != nil || len(ids) != 1 {
					t.Fatalf("sessions after login: %v, %v", ids, err)
				}
				return c
			}
			// listed records what Sessions says right after a copy is made.
			var mu sync.Mutex
			var listed [][]string
			hs.afterCreate = func(ctx context.Context, id string) {
				ids, err := m.UserSessions(context.WithoutCancel(ctx), "alice")
				if err != nil {
					t.Error(err)
				}
				mu.Lock()
				defer mu.Unlock()
				listed = append(listed, ids)
			}

			// DestroyUser runs in the handler, between the load and the
			// renewal: no copy is made.
			t.Run("before the renewal", func(t *testing.T) {
				c := login(t)
				listed = nil
				rh := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					s := session.FromContext(r.Context())
					if u, err := s.User(); err != nil || u != "alice" {
						t.Errorf("user %q, %v", u, err)
					}
					if err := m.DestroyUser(r.Context(), "alice"); err != nil {
						t.Error(err)
					}
					if err := s.Put("x", "late"); err != nil {
						t.Error(err)
					}
					if err := s.Renew(); err != nil {
						t.Error(err)
					}
				}))
				w := (&client{h: rh, cookie: c.cookie}).do(t, "GET", "/")
				// No cookie change: the browser may hold a newer token by
				// now (see TestLongRequestOutlivesRenewal).
				if w.Code != http.StatusOK || len(w.Result().Cookies()) != 0 {
					t.Errorf("renewal of a revoked session: %d %q, cookies %v; want 200 and no cookie change", w.Code, body(w), w.Result().Cookies())
				}
				for _, ids := range listed {
					if len(ids) != 0 {
						t.Errorf("the revoked session's copy was in the user's index: %v", ids)
					}
				}
				if ids, err := m.UserSessions(t.Context(), "alice"); err != nil || len(ids) != 0 {
					t.Fatalf("sessions after the renewal: %v, %v; want none", ids, err)
				}
				if got := body(c.do(t, "GET", "/user")); got != "" {
					t.Fatalf("revoked session still logged in as %q", got)
				}
			})

			// The request's context ends once the copy is made, so its
			// alias fails: the copy is deleted all the same, whether or not
			// the session was revoked just before the copy was made.
			for _, revoke := range []bool{false, true} {
				name := "ended during the renewal"
				if revoke {
					name = "revoked and ended during the renewal"
				}
				t.Run(name, func(t *testing.T) {
					c := login(t)
					before, err := m.UserSessions(t.Context(), "alice")
					if err != nil {
						t.Fatal(err)
					}
					ctx, cancel := context.WithCancel(t.Context())
					defer cancel()
					hs.beforeCreate = func(context.Context, string) {
						if revoke {
							if err := m.DestroyUser(context.WithoutCancel(ctx), "alice"); err != nil {
								t.Error(err)
							}
							before = nil
						}
					}
					hs.afterCreate = func(context.Context, string) { cancel() }
					r := httptest.NewRequestWithContext(ctx, "GET", "/renew", nil)
					r.AddCookie(c.cookie)
					h.ServeHTTP(httptest.NewRecorder(), r)
					hs.beforeCreate, hs.afterCreate = nil, nil
					ids, err := m.UserSessions(t.Context(), "alice")
					if err != nil || !slices.Equal(ids, before) {
						t.Fatalf("sessions after a renewal whose request ended: %v, %v; want %v", ids, err, before)
					}
					if err := m.DestroyUser(t.Context(), "alice"); err != nil {
						t.Fatal(err)
					}
				})
			}
		})
	}
}
