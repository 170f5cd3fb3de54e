package session_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/activekit/activekit/session"
)

// hookStore calls beforeCreate and afterCreate around each Apply that
// creates a record (a new session, or a renewal's copy), so that a test can
// act between the steps of a renewal. Set the hooks before the requests
// they are for start.
type hookStore struct {
	session.Store
	beforeCreate, afterCreate func(ctx context.Context, id string)
	// aliasErr, when set, runs the Alias (when made is true) or not, and
	// returns what it returns instead of the Alias's result.
	aliasErr func() (made bool, err error)
}

func (h *hookStore) Apply(ctx context.Context, id string, d session.Delta) (uint64, error) {
	if d.Create != nil && h.beforeCreate != nil {
		h.beforeCreate(ctx, id)
	}
	v, err := h.Store.Apply(ctx, id, d)
	if d.Create != nil && err == nil && h.afterCreate != nil {
		h.afterCreate(ctx, id)
	}
	return v, err
}

func (h *hookStore) Alias(ctx context.Context, oldID, newID string, v uint64, grace time.Duration) error {
	if h.aliasErr != nil {
		made, err := h.aliasErr()
		if made {
			if aerr := h.Store.(session.Aliaser).Alias(ctx, oldID, newID, v, grace); aerr != nil {
				return aerr
			}
		}
		return err
	}
	return h.Store.(session.Aliaser).Alias(ctx, oldID, newID, v, grace)
}

func (h *hookStore) Sessions(ctx context.Context, user string) ([]string, error) {
	return h.Store.(session.UserIndex).Sessions(ctx, user)
}

func (h *hookStore) DestroyUser(ctx context.Context, user string) error {
	return h.Store.(session.UserIndex).DestroyUser(ctx, user)
}

// renewing is a handler that reads the session, waits for proceed to be
// closed, puts key=value, and renews (or logs in as user, when not "").
func renewing(t *testing.T, read chan<- struct{}, proceed <-chan struct{}, key, value, user string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := session.FromContext(r.Context())
		if _, err := s.Keys(); err != nil {
			t.Error(err)
		}
		if read != nil {
			close(read)
		}
		if proceed != nil {
			<-proceed
		}
		err := s.Put(key, value)
		if err == nil && user != "" {
			err = s.SetUser(user)
		} else if err == nil {
			err = s.Renew()
		}
		if err != nil {
			t.Error(err)
		}
	})
}

// cookieAfter returns the cookie a browser holds after response w to a
// request that sent old.
func cookieAfter(w *httptest.ResponseRecorder, old *http.Cookie) *http.Cookie {
	c := old
	for _, ck := range w.Result().Cookies() {
		if c = nil; ck.MaxAge >= 0 {
			c = &http.Cookie{Name: ck.Name, Value: ck.Value}
		}
	}
	return c
}

// wantKeys fails t unless the session of cookie holds each key of want
// with its value.
func wantKeys(t *testing.T, h http.Handler, what string, cookie *http.Cookie, want map[string]string) {
	t.Helper()
	if cookie == nil {
		t.Fatalf("%s: no cookie", what)
	}
	c := &client{h: h, cookie: cookie}
	for k, v := range want {
		if got := body(c.do(t, "GET", "/get?k="+k)); got != "true:"+v {
			t.Errorf("%s: %s = %q, want %q", what, k, got, "true:"+v)
		}
	}
}

// TestConcurrentRenewals: two requests of one session, on two instances,
// each change a key and renew. The one whose renewal loses to the other's
// (its alias of the old ID finds an alias already) writes its change to the
// winner's copy, read through the alias, instead of dropping it: before, it
// answered 200 and its change was lost.
func TestConcurrentRenewals(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			open := b.open(t)
			// Instance 1 serves A; instance 2 serves B, through a hookStore.
			hs := &hookStore{Store: open()}
			m1, m2 := newManager(t, open()), newManager(t, hs)
			h := m1.Middleware(app(t))
			start := func(t *testing.T) *http.Cookie {
				c := &client{h: h}
				c.do(t, "GET", "/put?a=1")
				return c.cookie
			}
			renewA := func(old *http.Cookie) *httptest.ResponseRecorder {
				return <-serveAsync(m1.Middleware(renewing(t, nil, nil, "x", "A", "")), "/", old)
			}

			// B read the session before A renewed it, and saves after.
			t.Run("after", func(t *testing.T) {
				old := start(t)
				bRead, aDone := make(chan struct{}), make(chan struct{})
				doneB := serveAsync(m2.Middleware(renewing(t, bRead, aDone, "y", "B", "")), "/", old)
				<-bRead
				wA := renewA(old)
				close(aDone)
				checkRenewals(t, h, old, wA, <-doneB)
			})

			// A renews between B's copy and B's alias.
			t.Run("during", func(t *testing.T) {
				old := start(t)
				var wA *httptest.ResponseRecorder
				hs.beforeCreate = func(context.Context, string) { wA = renewA(old) }
				wB := <-serveAsync(m2.Middleware(renewing(t, nil, nil, "y", "B", "")), "/", old)
				hs.beforeCreate = nil
				checkRenewals(t, h, old, wA, wB)
			})

			// B logs in (SetUser) after A renewed: B's login is not made on
			// A's copy, whose token A's response carries, unless A logged
			// in as the same user; else B fails, and can be retried.
			t.Run("login", func(t *testing.T) {
				for _, aUser := range []string{"", "alice", "bob"} {
					old := start(t)
					bRead, aDone := make(chan struct{}), make(chan struct{})
					doneB := serveAsync(m2.Middleware(renewing(t, bRead, aDone, "y", "B", "alice")), "/", old)
					<-bRead
					wA := <-serveAsync(m1.Middleware(renewing(t, nil, nil, "x", "A", aUser)), "/", old)
					close(aDone)
					wB := <-doneB
					if aUser == "alice" {
						checkRenewals(t, h, old, wA, wB)
						continue
					}
					cA := cookieAfter(wA, old)
					if wA.Code != http.StatusOK || wB.Code != http.StatusServiceUnavailable || len(wB.Result().Cookies()) != 0 || cA.Value == old.Value {
						t.Fatalf("A as %q: A %d %v; B logging in as alice: %d %q %v; want 200 with a new cookie, and 503 without", aUser, wA.Code, wA.Result().Cookies(), wB.Code, body(wB), wB.Result().Cookies())
					}
					wantKeys(t, h, "A's token", cA, map[string]string{"a": "1", "x": "A"})
					c := &client{h: m1.Middleware(fleetApp(t, m1)), cookie: cA}
					if got := body(c.do(t, "GET", "/user")); got != aUser {
						t.Errorf("A as %q: user %q", aUser, got)
					}
				}
			})

			// Both at once, many times over.
			t.Run("concurrent", func(t *testing.T) {
				for range scaled(20) {
					old := start(t)
					aRead, bRead, both := make(chan struct{}), make(chan struct{}), make(chan struct{})
					doneA := serveAsync(m1.Middleware(renewing(t, aRead, both, "x", "A", "")), "/", old)
					doneB := serveAsync(m2.Middleware(renewing(t, bRead, both, "y", "B", "")), "/", old)
					<-aRead
					<-bRead
					close(both)
					checkRenewals(t, h, old, <-doneA, <-doneB)
				}
			})
		})
	}
}

func scaled(n int) int {
	if testing.Short() {
		return max(n/10, 2)
	}
	return n
}

// checkRenewals checks the responses of two renewals of the session of old,
// wA's request having put x=A and wB's y=B: both succeeded, at least one set
// a new cookie, and every token the browser may hold (the old one within
// the grace period, each one set) reaches a session holding both changes.
func checkRenewals(t *testing.T, h http.Handler, old *http.Cookie, wA, wB *httptest.ResponseRecorder) {
	t.Helper()
	if wA.Code != http.StatusOK || wB.Code != http.StatusOK {
		t.Fatalf("renewals answered %d %q and %d %q", wA.Code, body(wA), wB.Code, body(wB))
	}
	cA, cB := cookieAfter(wA, old), cookieAfter(wB, old)
	if cA.Value == old.Value && cB.Value == old.Value {
		t.Fatal("neither renewal set a new cookie")
	}
	want := map[string]string{"a": "1", "x": "A", "y": "B"}
	wantKeys(t, h, "old token", old, want)
	wantKeys(t, h, "A's token", cA, want)
	wantKeys(t, h, "B's token", cB, want)
}
