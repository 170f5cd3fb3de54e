package session_test

import (
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/memcachedstore"
)

// memcachedFleet is two Managers, each with its own Memcached client and
// store, behind a round-robin balancer.
func memcachedFleet(t *testing.T) *fleet {
	t.Helper()
	addr := testenv.MemcachedAddr(t)
	prefix := testenv.Name(t) + ":"
	f := &fleet{}
	for range 2 {
		c := memcache.New(addr)
		c.MaxIdleConns = 32
		// The tests count lost updates, not latency: under -race on a
		// loaded machine a call can take longer than the client's default
		// 500 ms, which would answer 503 (a failure the client sees, not
		// a loss) and fail them for the wrong reason.
		c.Timeout = 5 * time.Second
		t.Cleanup(func() { _ = c.Close() })
		s, err := memcachedstore.New(c, memcachedstore.WithPrefix(prefix))
		if err != nil {
			t.Fatal(err)
		}
		m := newManager(t, s, session.WithUpdateAttempts(1000))
		f.handlers = append(f.handlers, m.Middleware(fleetApp(t, m)))
	}
	return f
}

// Through the Manager, two instances on Memcached: concurrent requests
// setting different keys of one session, and concurrent Update increments
// of one key, lose nothing.
func TestNoLostUpdatesMemcached(t *testing.T) {
	f := memcachedFleet(t)
	puts, incs := 1000, 500
	if testing.Short() {
		puts, incs = 100, 50
	}
	c := &client{h: f}
	c.do(t, "GET", "/login?u=alice")
	cookie := c.cookie
	run := func(workers, n int, path func(i int) string) time.Duration {
		return hammer(t, f, cookie, workers, n, path)
	}
	putTime := run(16, puts, func(i int) string { return fmt.Sprintf("/put?k%d=%d", i, i) })
	check := &client{h: f, cookie: cookie}
	if got, _ := strconv.Atoi(body(check.do(t, "GET", "/keys"))); got != puts {
		t.Errorf("%d keys after %d concurrent puts of different keys: %d lost", got, puts, puts-got)
	}
	incTime := run(8, incs, func(int) string { return "/inc?k=n" })
	if n := readCounter(t, f, cookie); n != incs {
		t.Errorf("counter %d after %d Update increments: %d lost", n, incs, incs-n)
	}
	t.Logf("%d concurrent puts in %v, %d concurrent increments in %v, two instances",
		puts, putTime.Round(time.Millisecond), incs, incTime.Round(time.Millisecond))
}

// Login renews the token (the old one stays an alias for the grace period),
// and "log out everywhere" on one instance ends the user's sessions on both.
func TestRenewAndDestroyUserMemcached(t *testing.T) {
	f := memcachedFleet(t)
	laptop, phone := &client{h: f}, &client{h: f}
	laptop.do(t, "GET", "/put?cart=book")
	before := laptop.cookie
	laptop.do(t, "GET", "/login?u=alice")
	if laptop.cookie == nil || laptop.cookie.Value == before.Value {
		t.Fatal("login did not renew the token")
	}
	phone.do(t, "GET", "/login?u=alice")
	if got := body(laptop.do(t, "GET", "/get?k=cart")); got != "true:book" {
		t.Fatalf("cart after login: %q", got)
	}
	// A request still holding the old token (in flight during the login)
	// reaches the same session.
	if got := body((&client{h: f, cookie: before}).do(t, "GET", "/get?k=cart")); got != "true:book" {
		t.Fatalf("old token within the grace period: %q", got)
	}
	if got := body(phone.do(t, "GET", "/user")); got != "alice" {
		t.Fatalf("phone user %q", got)
	}
	if w := laptop.do(t, "GET", "/logout-all"); w.Code != http.StatusOK {
		t.Fatalf("logout-all: %d %s", w.Code, body(w))
	}
	for name, c := range map[string]*client{"laptop": laptop, "phone": phone} {
		if got := body(c.do(t, "GET", "/user")); got != "" {
			t.Errorf("%s still logged in as %q", name, got)
		}
	}
}
