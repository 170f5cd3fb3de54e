package session_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/redisstore"
)

// fleet is two Managers, each with its own Redis client, standing for two
// instances of a service behind a round-robin load balancer.
type fleet struct {
	handlers []http.Handler
	next     atomic.Uint64
}

func (f *fleet) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.handlers[f.next.Add(1)%uint64(len(f.handlers))].ServeHTTP(w, r)
}

func newFleet(t *testing.T, clients ...redis.UniversalClient) *fleet {
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, clients[0], prefix)
	f := &fleet{}
	for _, c := range clients {
		s, err := redisstore.New(c, redisstore.WithPrefix(prefix))
		if err != nil {
			t.Fatal(err)
		}
		m := newManager(t, s, session.WithUpdateAttempts(1000))
		f.handlers = append(f.handlers, m.Middleware(fleetApp(t, m)))
	}
	return f
}

// hammer sends n requests, path(0) to path(n-1), from workers concurrent
// clients sharing one session cookie, and fails the test if any is not
// answered 200. It returns how long they took.
func hammer(t *testing.T, h http.Handler, cookie *http.Cookie, workers, n int, path func(i int) string) time.Duration {
	t.Helper()
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Int64
	work := make(chan int)
	for range workers {
		wg.Go(func() {
			cc := &client{h: h, cookie: cookie}
			for i := range work {
				if w := cc.do(t, "GET", path(i)); w.Code != http.StatusOK {
					if failed.Add(1) == 1 {
						t.Errorf("%s: %d %s", path(i), w.Code, body(w))
					}
				}
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d requests failed", failed.Load())
	}
	return time.Since(start)
}

// fleetApp is one instance's application: app(t) plus the endpoints the
// two-instance tests use.
func fleetApp(t *testing.T, m *session.Manager) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", app(t))
	mux.HandleFunc("/logout-all", func(w http.ResponseWriter, r *http.Request) {
		u, err := session.FromContext(r.Context()).User()
		if err == nil {
			err = m.DestroyUser(r.Context(), u)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("/getint", func(w http.ResponseWriter, r *http.Request) {
		n, _, err := session.Get[int](session.FromContext(r.Context()), r.URL.Query().Get("k"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, n)
	})
	mux.HandleFunc("/keys", func(w http.ResponseWriter, r *http.Request) {
		keys, err := session.FromContext(r.Context()).Keys()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, len(keys))
	})
	mux.HandleFunc("/clear", func(w http.ResponseWriter, r *http.Request) {
		s := session.FromContext(r.Context())
		keys, err := s.Keys()
		for _, k := range keys {
			if err == nil {
				err = s.Delete(k)
			}
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	return mux
}

func TestNoLostUpdatesRedis(t *testing.T) {
	for name, clients := range map[string]func(t *testing.T) []redis.UniversalClient{
		"standalone": func(t *testing.T) []redis.UniversalClient {
			return []redis.UniversalClient{testenv.Redis(t), testenv.Redis(t)}
		},
		"cluster": func(t *testing.T) []redis.UniversalClient {
			return []redis.UniversalClient{testenv.RedisCluster(t), testenv.RedisCluster(t)}
		},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFleet(t, clients(t)...)
			// 10,000 concurrent updates of different keys, in rounds of 200
			// so that the session stays small; each round is checked.
			rounds, perRound, incs := 50, 200, 1000
			if testing.Short() {
				rounds, incs = 5, 100
			}
			c := &client{h: f}
			c.do(t, "GET", "/login?u=alice")
			cookie := c.cookie
			run := func(workers, n int, path func(i int) string) { hammer(t, f, cookie, workers, n, path) }
			check := &client{h: f, cookie: cookie}
			start := time.Now()
			lost := 0
			for r := range rounds {
				run(16, perRound, func(i int) string { return fmt.Sprintf("/put?r%d-%d=%d", r, i, i) })
				n, err := strconv.Atoi(body(check.do(t, "GET", "/keys")))
				if err != nil {
					t.Fatal(err)
				}
				lost += perRound - n
				if w := check.do(t, "GET", "/clear"); w.Code != http.StatusOK {
					t.Fatalf("clear: %d", w.Code)
				}
			}
			putTime := time.Since(start)
			start = time.Now()
			run(8, incs, func(int) string { return "/inc?k=n" })
			incTime := time.Since(start)
			n := readCounter(t, f, cookie)
			keys := rounds * perRound
			t.Logf("%d concurrent puts of different keys in %v (%d lost); %d concurrent CAS increments in %v (counter %d)",
				keys, putTime.Round(time.Millisecond), lost, incs, incTime.Round(time.Millisecond), n)
			if lost != 0 {
				t.Errorf("%d of %d updates of different keys lost", lost, keys)
			}
			if n != incs {
				t.Errorf("counter %d after %d compare-and-set increments: %d lost", n, incs, incs-n)
			}
		})
	}
}

func readCounter(t *testing.T, h http.Handler, cookie *http.Cookie) int {
	t.Helper()
	w := (&client{h: h, cookie: cookie}).do(t, "GET", "/getint?k=n")
	n, err := strconv.Atoi(body(w))
	if err != nil {
		t.Fatalf("counter: %q", body(w))
	}
	return n
}

// hookCounter counts round trips to Redis.
type hookCounter struct{ n atomic.Int64 }

func (c *hookCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *hookCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { c.n.Add(1); return next(ctx, cmd) }
}
func (c *hookCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { c.n.Add(1); return next(ctx, cmds) }
}

func TestRoundTripsRedis(t *testing.T) {
	rc := testenv.Redis(t)
	f := newFleet(t, rc)
	c := &client{h: f}
	c.do(t, "GET", "/put?a=1")
	c.do(t, "GET", "/get?k=a")
	c.do(t, "GET", "/inc?k=n")
	// Load every script into this Redis first: on a fresh server the first
	// call of a script is EVALSHA, answered NOSCRIPT, then EVAL.
	warm := &client{h: f}
	for _, path := range []string{"/put?a=1", "/get?k=a", "/inc?k=n", "/keys", "/clear", "/put?a=1", "/logout"} {
		warm.do(t, "GET", path)
	}
	cnt := &hookCounter{}
	rc.AddHook(cnt)
	for _, tc := range []struct {
		path string
		want int64
	}{
		{"/noop", 0},
		{"/get?k=a", 1},
		{"/put?a=2", 1}, // no read: the store enforces the size limit
		{"/put?a=3&b=4", 1},
		{"/inc?k=n", 2}, // compare-and-set: read, then write
		{"/keys", 1},
		{"/clear", 2}, // Keys reads, then one write deletes
		{"/logout", 1},
	} {
		before := cnt.n.Load()
		c.do(t, "GET", tc.path)
		if got := cnt.n.Load() - before; got != tc.want {
			t.Errorf("%s: %d round trips to Redis, want %d", tc.path, got, tc.want)
		}
	}
	// A new visitor who only reads costs nothing; one who writes, one.
	before := cnt.n.Load()
	(&client{h: f}).do(t, "GET", "/get?k=a")
	(&client{h: f}).do(t, "GET", "/put?a=1")
	if got := cnt.n.Load() - before; got != 1 {
		t.Errorf("new visitors: %d round trips, want 1", got)
	}
}

func TestRenewAndDestroyUserRedisCluster(t *testing.T) {
	f := newFleet(t, testenv.RedisCluster(t), testenv.RedisCluster(t))
	laptop, phone := &client{h: f}, &client{h: f}
	laptop.do(t, "GET", "/put?cart=book")
	laptop.do(t, "GET", "/login?u=alice")
	phone.do(t, "GET", "/login?u=alice")
	if got := body(laptop.do(t, "GET", "/get?k=cart")); got != "true:book" {
		t.Fatalf("cart after login: %q", got)
	}
	if got := body(phone.do(t, "GET", "/user")); got != "alice" {
		t.Fatalf("phone user %q", got)
	}
	// Log out everywhere through an endpoint of the app.
	w := laptop.do(t, "GET", "/logout-all")
	if w.Code != http.StatusOK {
		t.Fatalf("logout-all: %d %s", w.Code, body(w))
	}
	for name, c := range map[string]*client{"laptop": laptop, "phone": phone} {
		if got := body(c.do(t, "GET", "/user")); got != "" {
			t.Errorf("%s still logged in as %q", name, got)
		}
	}
}

// TestEncryptedPutRacingRenewRedis: with encryption, a request that read
// the session before another request renewed it writes its values, sealed
// to the ID they land in (the new one), not to the old ID it read, whose
// alias the store follows: such values never decrypted again, and every
// later renewal (login) of the session failed.
func TestEncryptedPutRacingRenewRedis(t *testing.T) {
	c := testenv.Redis(t)
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, c, prefix)
	store, err := redisstore.New(c, redisstore.WithPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	m := newManager(t, store, session.WithEncryption(session.EncryptionKey{Name: "k", Secret: bytes.Repeat([]byte{1}, 32)}))
	cl := &client{h: m.Middleware(app(t))}
	cl.do(t, "GET", "/put?a=1")
	old := cl.cookie
	read, resume := make(chan struct{}), make(chan struct{})
	slow := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := session.FromContext(r.Context())
		if _, _, err := session.Get[string](s, "a"); err != nil {
			t.Error(err)
		}
		close(read)
		<-resume
		if err := s.Put("x", "late"); err != nil {
			t.Error(err)
		}
	}))
	done := make(chan *httptest.ResponseRecorder)
	go func() {
		r := httptest.NewRequest("GET", "/", nil)
		r.AddCookie(old)
		w := httptest.NewRecorder()
		slow.ServeHTTP(w, r)
		done <- w
	}()
	<-read
	cl.do(t, "GET", "/renew")
	if cl.cookie == nil || cl.cookie.Value == old.Value {
		t.Fatalf("renew issued no new token: %v", cl.cookie)
	}
	close(resume)
	if w := <-done; w.Code != http.StatusOK || len(w.Result().Cookies()) != 0 {
		t.Fatalf("the slow request: %d %q, cookies %v", w.Code, body(w), w.Result().Cookies())
	}
	for k, want := range map[string]string{"a": "true:1", "x": "true:late"} {
		if w := cl.do(t, "GET", "/get?k="+k); body(w) != want {
			t.Fatalf("%s under the new token: %d %q, want %q", k, w.Code, body(w), want)
		}
	}
	if w := cl.do(t, "GET", "/renew"); w.Code != http.StatusOK {
		t.Fatalf("renew after the race: %d %q", w.Code, body(w))
	}
	if got := body(cl.do(t, "GET", "/get?k=x")); got != "true:late" {
		t.Fatalf("x after another renew: %q", got)
	}
}
