package session_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/gorilla/mux"
	"go.uber.org/goleak"

	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/memstore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// countingStore counts the calls that reach the store, and can fail them.
type countingStore struct {
	session.Store
	loads, applies, deletes atomic.Int64
	fail                    atomic.Bool
	// sizes: report the memstore's enforcement of Delta.MaxSize
	// (session.SizeLimiter), so that the Manager writes without reading.
	sizes bool
}

func (c *countingStore) EnforcesMaxSize() bool { return c.sizes }

var errDown = errors.New("store down")

func (c *countingStore) Load(ctx context.Context, id string, idle time.Duration) (session.Record, bool, error) {
	c.loads.Add(1)
	if c.fail.Load() {
		return session.Record{}, false, errDown
	}
	return c.Store.Load(ctx, id, idle)
}

func (c *countingStore) Apply(ctx context.Context, id string, d session.Delta) (uint64, error) {
	c.applies.Add(1)
	if c.fail.Load() {
		return 0, errDown
	}
	return c.Store.Apply(ctx, id, d)
}

func (c *countingStore) Delete(ctx context.Context, id string) error {
	c.deletes.Add(1)
	return c.Store.Delete(ctx, id)
}

func (c *countingStore) Alias(ctx context.Context, oldID, newID string, v uint64, grace time.Duration) error {
	return c.Store.(session.Aliaser).Alias(ctx, oldID, newID, v, grace)
}

func (c *countingStore) Sessions(ctx context.Context, user string) ([]string, error) {
	return c.Store.(session.UserIndex).Sessions(ctx, user)
}

func (c *countingStore) DestroyUser(ctx context.Context, user string) error {
	return c.Store.(session.UserIndex).DestroyUser(ctx, user)
}

func (c *countingStore) calls() int64 { return c.loads.Load() + c.applies.Load() + c.deletes.Load() }

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newMem(t testing.TB) (*countingStore, *fakeClock) {
	clock := &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	ms, err := memstore.New(memstore.WithClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	return &countingStore{Store: ms}, clock
}

func newManager(t testing.TB, s session.Store, opts ...session.Option) *session.Manager {
	t.Helper()
	m, err := session.NewManager(s, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// client is a browser with a one-cookie jar.
type client struct {
	h      http.Handler
	cookie *http.Cookie
}

func (c *client) do(t testing.TB, method, path string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, path, nil)
	if c.cookie != nil {
		r.AddCookie(c.cookie)
	}
	w := httptest.NewRecorder()
	c.h.ServeHTTP(w, r)
	for _, ck := range w.Result().Cookies() {
		if ck.MaxAge < 0 {
			c.cookie = nil
		} else {
			c.cookie = &http.Cookie{Name: ck.Name, Value: ck.Value}
		}
	}
	return w
}

// app is a small application: /put?k=v, /get?k, /inc?k, /login?u, /logout,
// /renew, /noop.
func app(t testing.TB) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/put", func(w http.ResponseWriter, r *http.Request) {
		s := session.FromContext(r.Context())
		for k, v := range r.URL.Query() {
			if err := s.Put(k, v[0]); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
		}
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("/get", func(w http.ResponseWriter, r *http.Request) {
		v, ok, err := session.Get[string](session.FromContext(r.Context()), r.URL.Query().Get("k"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "%v:%s", ok, v)
	})
	mux.HandleFunc("/inc", func(w http.ResponseWriter, r *http.Request) {
		err := session.Update(session.FromContext(r.Context()), r.URL.Query().Get("k"), func(n int, _ bool) (int, error) { return n + 1, nil })
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("/login", func(w http.ResponseWriter, r *http.Request) {
		if err := session.FromContext(r.Context()).SetUser(r.URL.Query().Get("u")); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("/user", func(w http.ResponseWriter, r *http.Request) {
		u, err := session.FromContext(r.Context()).User()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		io.WriteString(w, u)
	})
	mux.HandleFunc("/renew", func(w http.ResponseWriter, r *http.Request) { _ = session.FromContext(r.Context()).Renew() })
	mux.HandleFunc("/logout", func(w http.ResponseWriter, r *http.Request) { _ = session.FromContext(r.Context()).Destroy() })
	mux.HandleFunc("/noop", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "noop") })
	return mux
}

func body(w *httptest.ResponseRecorder) string { return w.Body.String() }

func TestPutGetAcrossRequests(t *testing.T) {
	store, _ := newMem(t)
	c := &client{h: newManager(t, store).Middleware(app(t))}
	if got := body(c.do(t, "GET", "/get?k=a")); got != "false:" {
		t.Fatalf("new visitor: %q", got)
	}
	if c.cookie != nil {
		t.Fatal("a read by a new visitor issued a cookie")
	}
	c.do(t, "GET", "/put?a=1")
	if c.cookie == nil {
		t.Fatal("no cookie after a Put")
	}
	if got := body(c.do(t, "GET", "/get?k=a")); got != "true:1" {
		t.Fatalf("get after put: %q", got)
	}
	c.do(t, "GET", "/inc?k=n")
	c.do(t, "GET", "/inc?k=n")
	if got := body(c.do(t, "GET", "/get?k=a")); got != "true:1" {
		t.Fatalf("get after inc: %q", got)
	}
}

func TestStoreCalls(t *testing.T) {
	store, _ := newMem(t)
	c := &client{h: newManager(t, store).Middleware(app(t))}
	c.do(t, "GET", "/put?a=1")
	for _, tc := range []struct {
		path                   string
		loads, applies, others int64
	}{
		{"/noop", 0, 0, 0},
		{"/get?k=a", 1, 0, 0},
		{"/put?b=2", 1, 1, 0},
		{"/put?b=2&c=3", 1, 1, 0},
		{"/inc?k=n", 1, 1, 0},
		{"/logout", 0, 0, 1},
	} {
		l, a, o := store.loads.Load(), store.applies.Load(), store.deletes.Load()
		c.do(t, "GET", tc.path)
		if dl, da, do := store.loads.Load()-l, store.applies.Load()-a, store.deletes.Load()-o; dl != tc.loads || da != tc.applies || do != tc.others {
			t.Errorf("%s: %d loads, %d applies, %d deletes; want %d, %d, %d", tc.path, dl, da, do, tc.loads, tc.applies, tc.others)
		}
	}
}

func TestCookieFlags(t *testing.T) {
	store, _ := newMem(t)
	for name, tc := range map[string]struct {
		opts   []session.Option
		secure bool
		name   string
	}{
		"defaults": {nil, true, session.DefaultCookieName},
		"host":     {[]session.Option{session.WithCookie(session.CookieConfig{Name: "__Host-s"})}, true, "__Host-s"},
		"insecure": {[]session.Option{session.WithInsecureCookie()}, false, session.FallbackCookieName},
	} {
		t.Run(name, func(t *testing.T) {
			w := (&client{h: newManager(t, store, tc.opts...).Middleware(app(t))}).do(t, "GET", "/put?a=1")
			cs := w.Result().Cookies()
			if len(cs) != 1 {
				t.Fatalf("cookies %v", cs)
			}
			c := cs[0]
			if c.Name != tc.name || c.Secure != tc.secure || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" || c.Domain != "" {
				t.Errorf("cookie %s: name %q secure %v httponly %v samesite %v path %q", c.Raw, c.Name, c.Secure, c.HttpOnly, c.SameSite, c.Path)
			}
			if c.MaxAge != int(session.DefaultAbsoluteTimeout/time.Second) {
				t.Errorf("Max-Age %d", c.MaxAge)
			}
			if _, ok := session.TokenID(c.Value); !ok || len(c.Value) != 43 {
				t.Errorf("token %q is not 43 base64url characters", c.Value)
			}
		})
	}
}

func TestNewManagerValidates(t *testing.T) {
	store, _ := newMem(t)
	key := session.EncryptionKey{Name: "k1", Secret: bytes.Repeat([]byte{1}, 32)}
	for name, opts := range map[string][]session.Option{
		"nil option":           {nil},
		"idle over absolute":   {session.WithIdleTimeout(2 * time.Hour), session.WithAbsoluteTimeout(time.Hour)},
		"negative":             {session.WithRenewGrace(-1)},
		"value over session":   {session.WithLimits(100, 10)},
		"bad cookie name":      {session.WithCookie(session.CookieConfig{Name: "a b"})},
		"insecure host":        {session.WithCookie(session.CookieConfig{Name: "__Host-x"}), session.WithInsecureCookie()},
		"host with domain":     {session.WithCookie(session.CookieConfig{Name: "__Host-x", Domain: "example.com"})},
		"host any case, path":  {session.WithCookie(session.CookieConfig{Name: "__HOST-x", Path: "/app"})},
		"insecure secure":      {session.WithCookie(session.CookieConfig{Name: "__Secure-x"}), session.WithInsecureCookie()},
		"insecure secure case": {session.WithCookie(session.CookieConfig{Name: "__secure-x"}), session.WithInsecureCookie()},
		"none insecure":        {session.WithCookie(session.CookieConfig{SameSite: http.SameSiteNoneMode}), session.WithInsecureCookie()},
		"short key":            {session.WithEncryption(session.EncryptionKey{Name: "k", Secret: []byte("short")})},
		"duplicate key names":  {session.WithEncryption(key, key)},
		"unnamed key":          {session.WithEncryption(session.EncryptionKey{Secret: key.Secret})},
		"v1 without keys":      {session.WithEncryptionV1()},
	} {
		if _, err := session.NewManager(store, opts...); err == nil {
			t.Errorf("%s: NewManager accepted it", name)
		}
	}
	if _, err := session.NewManager(nil); err == nil {
		t.Error("nil store accepted")
	}
}

func TestNoSession(t *testing.T) {
	s := session.FromContext(context.Background())
	if s != nil {
		t.Fatal("FromContext outside the middleware is not nil")
	}
	if _, _, err := session.Get[int](s, "a"); !errors.Is(err, session.ErrNoSession) {
		t.Errorf("Get: %v", err)
	}
	for name, err := range map[string]error{
		"Put": s.Put("a", 1), "Delete": s.Delete("a"), "Renew": s.Renew(), "Destroy": s.Destroy(), "SetUser": s.SetUser("u"),
		"Update": session.Update(s, "a", func(int, bool) (int, error) { return 0, nil }),
	} {
		if !errors.Is(err, session.ErrNoSession) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestLimits(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store, session.WithLimits(16, 25))
	var errs []error
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := session.FromContext(r.Context())
		errs = append(errs, s.Put("big", strings.Repeat("x", 20)), s.Put("a", "0123456789"), s.Put("b", "0123456789"), s.Put("a", "01"))
	}))
	(&client{h: h}).do(t, "GET", "/")
	var se *session.SizeError
	if !errors.Is(errs[0], session.ErrTooLarge) || !errors.As(errs[0], &se) || se.Session || se.Key != "big" || se.Limit != 16 {
		t.Errorf("oversized value: %v", errs[0])
	}
	if errs[1] != nil {
		t.Errorf("first value: %v", errs[1])
	}
	if !errors.As(errs[2], &se) || !se.Session || se.Limit != 25 {
		t.Errorf("value over the session limit: %v", errs[2])
	}
	if errs[3] != nil {
		t.Errorf("replacing a value with a smaller one: %v", errs[3])
	}
}

// TestStoreDown: a failing store answers 503 with Retry-After, issues no
// cookie, logs once and never hands out a fresh session.
func TestStoreDown(t *testing.T) {
	store, _ := newMem(t)
	var logs bytes.Buffer
	m := newManager(t, store, session.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))), session.WithRetryAfter(3*time.Second))
	c := &client{h: m.Middleware(app(t))}
	c.do(t, "GET", "/put?a=1")
	before := c.cookie
	store.fail.Store(true)
	for _, path := range []string{"/get?k=a", "/put?a=2", "/inc?k=n"} {
		logs.Reset()
		w := c.do(t, "GET", path)
		if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") != "3" {
			t.Errorf("%s with the store down: %d, Retry-After %q", path, w.Code, w.Header().Get("Retry-After"))
		}
		if len(w.Result().Cookies()) != 0 {
			t.Errorf("%s with the store down set a cookie: %v", path, w.Result().Cookies())
		}
		if n := strings.Count(logs.String(), "session store failure"); n != 1 {
			t.Errorf("%s: logged %d times, want once: %s", path, n, logs.String())
		}
	}
	// A new visitor writing a session is refused too, not given a session.
	w := (&client{h: m.Middleware(app(t))}).do(t, "GET", "/put?a=1")
	if w.Code != http.StatusServiceUnavailable || len(w.Result().Cookies()) != 0 {
		t.Errorf("new visitor with the store down: %d %v", w.Code, w.Result().Cookies())
	}
	// A handler that never touches the session is unaffected.
	if w := c.do(t, "GET", "/noop"); w.Code != http.StatusOK {
		t.Errorf("untouched request with the store down: %d", w.Code)
	}
	store.fail.Store(false)
	if c.cookie != before {
		t.Fatal("cookie changed while the store was down")
	}
	if got := body(c.do(t, "GET", "/get?k=a")); got != "true:1" {
		t.Fatalf("after recovery: %q", got)
	}
}

func TestCustomErrorHandler(t *testing.T) {
	store, _ := newMem(t)
	var got error
	m := newManager(t, store, session.WithErrorHandler(func(w http.ResponseWriter, r *http.Request, err error) {
		got = err
		http.Error(w, "custom", http.StatusTeapot)
	}))
	store.fail.Store(true)
	c := &client{h: m.Middleware(app(t)), cookie: &http.Cookie{Name: session.DefaultCookieName, Value: mustToken(t, "")}}
	if w := c.do(t, "GET", "/get?k=a"); w.Code != http.StatusTeapot || !errors.Is(got, errDown) {
		t.Fatalf("custom handler: %d, %v", w.Code, got)
	}
}

func mustToken(t testing.TB, user string) string {
	tok, err := session.NewToken(user)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestBadCookies: tampered, oversized or unknown cookies are no session,
// never an error page.
func TestBadCookies(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	good := &client{h: m.Middleware(app(t))}
	good.do(t, "GET", "/put?a=secret")
	tok := good.cookie.Value
	flip := []byte(tok)
	flip[5] ^= 1
	for name, v := range map[string]string{
		"empty":         "",
		"tampered":      string(flip),
		"truncated":     tok[:42],
		"extended":      tok + "A",
		"oversized":     strings.Repeat("A", 10000),
		"noncanonical":  tok[:42] + "B",
		"bad tag":       "!!!!!!!!." + tok,
		"unknown":       mustToken(t, ""),
		"unknown user":  mustToken(t, "alice"),
		"padding":       tok + "=",
		"percent":       "%41" + tok[3:],
		"two dots":      "AAAAAAAA.AAAAAAAA." + tok,
		"store id used": storeID(t, tok),
	} {
		t.Run(name, func(t *testing.T) {
			calls := store.calls()
			c := &client{h: m.Middleware(app(t)), cookie: &http.Cookie{Name: session.DefaultCookieName, Value: v}}
			w := c.do(t, "GET", "/get?k=a")
			if w.Code != http.StatusOK || body(w) != "false:" {
				t.Fatalf("cookie %.20q: %d %q, want 200 and no session", v, w.Code, body(w))
			}
			if _, ok := session.TokenID(v); !ok && store.calls() != calls {
				t.Errorf("a malformed cookie reached the store")
			}
		})
	}
}

func storeID(t testing.TB, tok string) string {
	id, ok := session.TokenID(tok)
	if !ok {
		t.Fatal("bad token")
	}
	return id
}

// TestStoreDumpIsNotACookie: what a dump of the store shows (its IDs) does
// not open the session.
func TestStoreDumpIsNotACookie(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	victim := &client{h: m.Middleware(app(t))}
	victim.do(t, "GET", "/login?u=alice")
	victim.do(t, "GET", "/put?a=secret")
	ids, err := m.UserSessions(t.Context(), "alice")
	if err != nil || len(ids) != 1 {
		t.Fatalf("UserSessions: %v %v", ids, err)
	}
	if ids[0] == victim.cookie.Value {
		t.Fatal("the store holds the token itself")
	}
	attacker := &client{h: m.Middleware(app(t)), cookie: &http.Cookie{Name: session.DefaultCookieName, Value: ids[0]}}
	if got := body(attacker.do(t, "GET", "/get?k=a")); got != "false:" {
		t.Fatalf("a store ID used as a cookie opened the session: %q", got)
	}
}

// TestFixation: a token set before login is worthless after it.
func TestFixation(t *testing.T) {
	store, clock := newMem(t)
	m := newManager(t, store)
	victim := &client{h: m.Middleware(app(t))}
	victim.do(t, "GET", "/put?cart=book")
	planted := victim.cookie.Value // the attacker knows this token
	victim.do(t, "GET", "/login?u=alice")
	if victim.cookie.Value == planted {
		t.Fatal("login kept the token")
	}
	if !strings.HasPrefix(victim.cookie.Value, session.UserTag("alice")+".") {
		t.Errorf("user token %q lacks the user tag", victim.cookie.Value)
	}
	if got := body(victim.do(t, "GET", "/get?k=cart")); got != "true:book" {
		t.Fatalf("values lost at login: %q", got)
	}
	if got := body(victim.do(t, "GET", "/user")); got != "alice" {
		t.Fatalf("user %q", got)
	}
	attacker := &client{h: m.Middleware(app(t)), cookie: &http.Cookie{Name: session.DefaultCookieName, Value: planted}}
	// Within the grace period the old token still resolves (for requests in
	// flight); after it, it is worthless.
	if got := body(attacker.do(t, "GET", "/user")); got != "alice" {
		t.Fatalf("old token within grace: %q", got)
	}
	clock.Advance(session.DefaultRenewGrace)
	attacker.cookie = &http.Cookie{Name: session.DefaultCookieName, Value: planted}
	if got := body(attacker.do(t, "GET", "/user")); got != "" {
		t.Fatalf("old token after grace opened the session of %q", got)
	}
	if got := body(victim.do(t, "GET", "/user")); got != "alice" {
		t.Fatalf("victim after grace: %q", got)
	}
	// Renew without a user change rotates too and keeps the user.
	before := victim.cookie.Value
	victim.do(t, "GET", "/renew")
	if victim.cookie.Value == before || body(victim.do(t, "GET", "/user")) != "alice" {
		t.Fatal("Renew did not rotate the token or lost the user")
	}
}

func TestDestroyAndDestroyUser(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	laptop, phone, other := &client{h: m.Middleware(app(t))}, &client{h: m.Middleware(app(t))}, &client{h: m.Middleware(app(t))}
	laptop.do(t, "GET", "/login?u=alice")
	phone.do(t, "GET", "/login?u=alice")
	other.do(t, "GET", "/login?u=bob")
	if err := m.DestroyUser(t.Context(), "alice"); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*client{"laptop": laptop, "phone": phone} {
		if got := body(c.do(t, "GET", "/user")); got != "" {
			t.Errorf("%s still logged in as %q after DestroyUser", name, got)
		}
		// A write to a revoked session does not resurrect it.
		c.cookie = &http.Cookie{Name: session.DefaultCookieName, Value: mustToken(t, "alice")}
	}
	if got := body(other.do(t, "GET", "/user")); got != "bob" {
		t.Errorf("bob: %q", got)
	}
	w := other.do(t, "GET", "/logout")
	if c := w.Result().Cookies(); len(c) != 1 || c[0].MaxAge >= 0 {
		t.Errorf("logout did not clear the cookie: %v", c)
	}
	if got := body((&client{h: m.Middleware(app(t)), cookie: other.cookie}).do(t, "GET", "/user")); got != "" {
		t.Errorf("after logout: %q", got)
	}
}

// TestRevokedDuringRequest: a session revoked between load and save is not
// resurrected by the save.
func TestRevokedDuringRequest(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	c := &client{h: m.Middleware(app(t))}
	c.do(t, "GET", "/login?u=alice")
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := session.FromContext(r.Context())
		if _, _, err := session.Get[string](s, "a"); err != nil {
			t.Error(err)
		}
		if err := m.DestroyUser(r.Context(), "alice"); err != nil {
			t.Error(err)
		}
		if err := s.Put("a", "late"); err != nil {
			t.Error(err)
		}
	}))
	(&client{h: h, cookie: c.cookie}).do(t, "GET", "/")
	if ids, _ := m.UserSessions(t.Context(), "alice"); len(ids) != 0 {
		t.Fatalf("sessions after revocation: %v", ids)
	}
	if got := body(c.do(t, "GET", "/get?k=a")); got != "false:" {
		t.Fatalf("revoked session resurrected: %q", got)
	}
}

func TestIdleAndAbsoluteTimeouts(t *testing.T) {
	store, clock := newMem(t)
	m := newManager(t, store, session.WithIdleTimeout(10*time.Minute), session.WithAbsoluteTimeout(time.Hour))
	c := &client{h: m.Middleware(app(t))}
	c.do(t, "GET", "/put?a=1")
	for range 5 { // active every 9 minutes: survives
		clock.Advance(9 * time.Minute)
		if got := body(c.do(t, "GET", "/get?k=a")); got != "true:1" {
			t.Fatalf("active session lost: %q", got)
		}
	}
	clock.Advance(16 * time.Minute) // 61 minutes: past the absolute timeout
	if got := body(c.do(t, "GET", "/get?k=a")); got != "false:" {
		t.Fatalf("session past its absolute timeout: %q", got)
	}
	c.cookie = nil
	c.do(t, "GET", "/put?a=2")
	clock.Advance(10 * time.Minute)
	if got := body(c.do(t, "GET", "/get?k=a")); got != "false:" {
		t.Fatalf("session past its idle timeout: %q", got)
	}
}

func TestEncryption(t *testing.T) {
	store, _ := newMem(t)
	k1 := session.EncryptionKey{Name: "2024", Secret: bytes.Repeat([]byte{1}, 32)}
	k2 := session.EncryptionKey{Name: "2025", Secret: bytes.Repeat([]byte{2}, 32)}
	m1 := newManager(t, store, session.WithEncryption(k1))
	c := &client{h: m1.Middleware(app(t))}
	c.do(t, "GET", "/login?u=alice")
	c.do(t, "GET", "/put?card=4111-1111")
	rec, found, err := store.Load(t.Context(), storeID(t, c.cookie.Value), 0)
	if err != nil || !found {
		t.Fatal(found, err)
	}
	if bytes.Contains(rec.Values["card"].Data, []byte("4111")) {
		t.Fatal("value stored in clear text")
	}
	// Rotation: a new key first, the old one still decrypts.
	m2 := newManager(t, store, session.WithEncryption(k2, k1))
	c.h = m2.Middleware(app(t))
	if got := body(c.do(t, "GET", "/get?k=card")); got != "true:4111-1111" {
		t.Fatalf("after key rotation: %q", got)
	}
	// Renew re-encrypts under the new ID.
	c.do(t, "GET", "/renew")
	if got := body(c.do(t, "GET", "/get?k=card")); got != "true:4111-1111" {
		t.Fatalf("after renew: %q", got)
	}
	// Without the key, or with the value moved to another key or session,
	// it does not decrypt.
	c.h = newManager(t, store, session.WithEncryption(k2)).Middleware(app(t))
	c.do(t, "GET", "/put?x=1") // re-seal nothing old; card stays under k1? no: renew re-sealed under k2
	other := &client{h: m2.Middleware(app(t))}
	other.do(t, "GET", "/put?y=1")
	rec, _, _ = store.Load(t.Context(), storeID(t, c.cookie.Value), 0)
	if _, err := store.Apply(t.Context(), storeID(t, other.cookie.Value), session.Delta{Set: map[string][]byte{"y": rec.Values["card"].Data}, Idle: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if w := other.do(t, "GET", "/get?k=y"); w.Code != http.StatusInternalServerError || !strings.Contains(body(w), "decrypt") {
		t.Fatalf("a ciphertext copied to another session: %d %q", w.Code, body(w))
	}
}

// TestStreaming: the session is saved before the first flush, the response
// is not buffered, and http.ResponseController reaches the writer.
func TestStreaming(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	chunks := make(chan struct{})
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := session.FromContext(r.Context()).Put("a", 1); err != nil {
			t.Error(err)
		}
		rc := http.NewResponseController(w)
		io.WriteString(w, "first")
		if err := rc.Flush(); err != nil {
			t.Errorf("Flush: %v", err)
		}
		<-chunks
		io.WriteString(w, "second")
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if len(resp.Cookies()) != 1 {
		t.Fatalf("cookies at the first flush: %v", resp.Cookies())
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first" {
		t.Fatalf("first chunk: %q %v", buf, err)
	}
	close(chunks) // the handler is still running: the first chunk was streamed
	rest, _ := io.ReadAll(resp.Body)
	if string(rest) != "second" {
		t.Fatalf("rest %q", rest)
	}
	if store.applies.Load() != 1 {
		t.Fatalf("%d applies, want 1", store.applies.Load())
	}
}

// TestRouters: the middleware works with net/http's ServeMux, chi and
// gorilla/mux.
func TestRouters(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	put := func(w http.ResponseWriter, r *http.Request) {
		name := mux.Vars(r)["name"] // gorilla/mux
		if name == "" {
			name = chi.URLParam(r, "name")
		}
		if name == "" {
			name = r.PathValue("name") // ServeMux
		}
		_ = session.FromContext(r.Context()).Put("who", name)
	}
	get := func(w http.ResponseWriter, r *http.Request) {
		v, _, _ := session.Get[string](session.FromContext(r.Context()), "who")
		io.WriteString(w, v)
	}
	std := http.NewServeMux()
	std.HandleFunc("GET /put/{name}", put)
	std.HandleFunc("GET /get", get)
	cr := chi.NewRouter()
	cr.Use(m.Middleware)
	cr.Get("/put/{name}", put)
	cr.Get("/get", get)
	gr := mux.NewRouter()
	gr.Use(m.Middleware)
	gr.HandleFunc("/put/{name}", put).Methods("GET")
	gr.HandleFunc("/get", get).Methods("GET")
	for name, h := range map[string]http.Handler{"ServeMux": m.Middleware(std), "chi": cr, "gorilla": gr} {
		c := &client{h: h}
		c.do(t, "GET", "/put/"+name)
		if got := body(c.do(t, "GET", "/get")); got != name {
			t.Errorf("%s: %q", name, got)
		}
	}
}

// TestBlindWrites: with a store that enforces the session size limit itself,
// a request that changes the session without reading it makes one call, and
// keeps every promise of the read-then-write path.
func TestBlindWrites(t *testing.T) {
	newBlind := func(t *testing.T, opts ...session.Option) (*countingStore, *session.Manager) {
		store, _ := newMem(t)
		store.sizes = true
		return store, newManager(t, store, opts...)
	}
	t.Run("calls", func(t *testing.T) {
		store, m := newBlind(t)
		c := &client{h: m.Middleware(app(t))}
		c.do(t, "GET", "/put?a=1")
		h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s := session.FromContext(r.Context())
			if err := errors.Join(s.Put("b", "2"), s.Delete("a")); err != nil {
				t.Error(err)
			}
			// A read of a key put in this request needs no load either.
			if v, ok, err := session.Get[string](s, "b"); v != "2" || !ok || err != nil {
				t.Errorf("Get of a pending value: %q %v %v", v, ok, err)
			}
		}))
		for _, tc := range []struct {
			name                   string
			h                      http.Handler
			path                   string
			loads, applies, others int64
		}{
			{"put", c.h, "/put?b=2", 0, 1, 0},
			{"put two", c.h, "/put?b=2&c=3", 0, 1, 0},
			{"put, delete, get pending", h, "/", 0, 1, 0},
			{"get", c.h, "/get?k=b", 1, 0, 0},
			{"update", c.h, "/inc?k=n", 1, 1, 0},
			{"logout", c.h, "/logout", 0, 0, 1},
		} {
			l, a, o := store.loads.Load(), store.applies.Load(), store.deletes.Load()
			if w := (&client{h: tc.h, cookie: c.cookie}).do(t, "GET", tc.path); w.Code != http.StatusOK {
				t.Fatalf("%s: %d %s", tc.name, w.Code, body(w))
			}
			if dl, da, do := store.loads.Load()-l, store.applies.Load()-a, store.deletes.Load()-o; dl != tc.loads || da != tc.applies || do != tc.others {
				t.Errorf("%s: %d loads, %d applies, %d deletes; want %d, %d, %d", tc.name, dl, da, do, tc.loads, tc.applies, tc.others)
			}
		}
	})
	t.Run("values", func(t *testing.T) {
		_, m := newBlind(t)
		c := &client{h: m.Middleware(app(t))}
		c.do(t, "GET", "/put?a=1&b=2")
		tok := c.cookie.Value
		c.do(t, "GET", "/put?a=10")
		(&client{h: m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if err := session.FromContext(r.Context()).Delete("b"); err != nil {
				t.Error(err)
			}
		})), cookie: c.cookie}).do(t, "GET", "/")
		if c.cookie.Value != tok {
			t.Fatal("a blind write changed the token")
		}
		for k, want := range map[string]string{"a": "true:10", "b": "false:"} {
			if got := body(c.do(t, "GET", "/get?k="+k)); got != want {
				t.Errorf("%s: %q, want %q", k, got, want)
			}
		}
	})
	t.Run("session limit", func(t *testing.T) {
		store, m := newBlind(t, session.WithLimits(16, 25))
		c := &client{h: m.Middleware(app(t))}
		c.do(t, "GET", "/put?a=0123456789") // 13 bytes with its key and quotes
		var putErr error
		h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			putErr = session.FromContext(r.Context()).Put("b", "0123456789")
			io.WriteString(w, "handler")
		}))
		before := store.applies.Load()
		w := (&client{h: h, cookie: c.cookie}).do(t, "GET", "/")
		if putErr != nil {
			t.Fatalf("blind Put within the value limit: %v", putErr)
		}
		if w.Code != http.StatusInternalServerError || strings.Contains(body(w), "handler") || store.applies.Load()-before != 1 {
			t.Fatalf("a session over the limit at save: %d %q, %d applies", w.Code, body(w), store.applies.Load()-before)
		}
		if got := body(c.do(t, "GET", "/get?k=b")); got != "false:" {
			t.Fatalf("a refused value was stored: %q", got)
		}
		// A value over the value limit fails at once, without a read.
		h = m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			putErr = session.FromContext(r.Context()).Put("c", strings.Repeat("x", 20))
		}))
		loads := store.loads.Load()
		(&client{h: h, cookie: c.cookie}).do(t, "GET", "/")
		if !errors.Is(putErr, session.ErrTooLarge) || store.loads.Load() != loads {
			t.Fatalf("value over the limit: %v, %d loads", putErr, store.loads.Load()-loads)
		}
	})
	t.Run("ended session is not resurrected", func(t *testing.T) {
		store, m := newBlind(t)
		victim := &client{h: m.Middleware(app(t))}
		victim.do(t, "GET", "/login?u=alice")
		victim.do(t, "GET", "/put?a=1")
		old := victim.cookie
		if err := m.DestroyUser(t.Context(), "alice"); err != nil {
			t.Fatal(err)
		}
		// A blind write on the revoked session starts a new, anonymous one.
		c := &client{h: m.Middleware(app(t)), cookie: old}
		if w := c.do(t, "GET", "/put?b=2"); w.Code != http.StatusOK || c.cookie == nil || c.cookie.Value == old.Value {
			t.Fatalf("blind write on a revoked session: %d, cookie %v", w.Code, c.cookie)
		}
		if got := body(c.do(t, "GET", "/user")); got != "" {
			t.Fatalf("new session bound to %q", got)
		}
		if got := body(c.do(t, "GET", "/get?k=a")); got != "false:" {
			t.Fatalf("new session holds the revoked one's values: %q", got)
		}
		if got := body((&client{h: m.Middleware(app(t)), cookie: old}).do(t, "GET", "/get?k=b")); got != "false:" {
			t.Fatalf("revoked session resurrected: %q", got)
		}
		// A blind delete on an unknown session changes no cookie: the
		// token may have been live when the request came, and the browser
		// may hold a newer one by now (TestLongRequestOutlivesRenewal).
		w := (&client{h: m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_ = session.FromContext(r.Context()).Delete("a")
		})), cookie: old}).do(t, "GET", "/")
		if cs := w.Result().Cookies(); w.Code != http.StatusOK || len(cs) != 0 {
			t.Fatalf("blind delete on an ended session: %d, cookies %v", w.Code, cs)
		}
		if ids, _ := m.UserSessions(t.Context(), "alice"); len(ids) != 0 {
			t.Fatalf("alice's sessions: %v", ids)
		}
		_ = store
	})
	t.Run("encryption reads first", func(t *testing.T) {
		store, m := newBlind(t, session.WithEncryption(session.EncryptionKey{Name: "k", Secret: bytes.Repeat([]byte{1}, 32)}))
		c := &client{h: m.Middleware(app(t))}
		c.do(t, "GET", "/put?a=1")
		l := store.loads.Load()
		c.do(t, "GET", "/put?a=2")
		if store.loads.Load()-l != 1 {
			t.Fatalf("%d loads for a Put with encryption, want 1", store.loads.Load()-l)
		}
		if got := body(c.do(t, "GET", "/get?k=a")); got != "true:2" {
			t.Fatalf("%q", got)
		}
	})
}

// TestLimitsCountSealedValues: with encryption, Put counts values as the
// store holds them (sealed), so a store enforcing the limit never refuses
// what Put accepted.
func TestLimitsCountSealedValues(t *testing.T) {
	store, _ := newMem(t)
	store.sizes = true
	m := newManager(t, store, session.WithLimits(100, 160),
		session.WithEncryption(session.EncryptionKey{Name: "k", Secret: bytes.Repeat([]byte{1}, 32)}))
	var errs []error
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// 60 bytes of JSON, 91 sealed (+2+len("k")+12+16), 92 with the key.
		errs = append(errs, session.FromContext(r.Context()).Put(r.URL.Path[1:], strings.Repeat("x", 58)))
	}))
	c := &client{h: h}
	if w := c.do(t, "GET", "/a"); w.Code != http.StatusOK || errs[0] != nil {
		t.Fatalf("first value: %d %v", w.Code, errs[0])
	}
	// 92 + 92 > 160, though 92 + 61 would fit.
	w := c.do(t, "GET", "/b")
	var se *session.SizeError
	if !errors.As(errs[1], &se) || !se.Session || se.Size != 184 {
		t.Fatalf("second value: %v, want a session SizeError of 184 bytes", errs[1])
	}
	if w.Code != http.StatusOK {
		t.Fatalf("the handler's request failed at save: %d", w.Code)
	}
}

// TestCookieHeader: the Manager reads the cookies of its name in a Cookie
// header as http.Request.CookiesNamed does, and uses the first whose value
// is a token (see TestCookieShadowedByForeignValue).
func TestCookieHeader(t *testing.T) {
	store, _ := newMem(t)
	m := newManager(t, store)
	c := &client{h: m.Middleware(app(t))}
	c.do(t, "GET", "/put?a=1")
	tok := c.cookie.Value
	n := session.DefaultCookieName
	for _, lines := range [][]string{
		{n + "=" + tok},
		{"a=1; " + n + "=" + tok + "; b=2"},
		{n + `="` + tok + `"`},
		{n + `=bad"; ` + n + "=" + tok},
		{n + "=bad value; " + n + "=" + tok},
		{"a=1", n + "=" + tok},
		{"  " + n + " = " + tok + " "},
		{n + " =" + tok},
		{strings.ToLower(n) + "=" + tok},
		{n + "=" + tok + "x"},
		{";;" + n + "=" + tok + ";"},
		{session.FallbackCookieName + "=" + tok},
	} {
		r := httptest.NewRequest("GET", "/get?k=a", nil)
		r.Header["Cookie"] = lines
		// As net/http reads the cookies of that name, the first that is a
		// token counting (see TestCookieShadowedByForeignValue).
		want := "false:"
		for _, ck := range r.CookiesNamed(n) {
			if _, ok := session.TokenID(ck.Value); ok {
				if ck.Value == tok {
					want = "true:1"
				}
				break
			}
		}
		w := httptest.NewRecorder()
		m.Middleware(app(t)).ServeHTTP(w, r)
		if got := body(w); got != want {
			t.Errorf("Cookie %q: %q, want %q (as net/http reads it, the first token)", lines, got, want)
		}
	}
}

// TestBlindPutThenRenewKeepsLimit: a Put that skipped the read (so checked
// only the pending values) followed by Renew or SetUser, which copy the
// session to a new token, still cannot take the session past its limit.
func TestBlindPutThenRenewKeepsLimit(t *testing.T) {
	for _, renew := range []string{"Renew", "SetUser"} {
		t.Run(renew, func(t *testing.T) {
			store, _ := newMem(t)
			store.sizes = true
			m := newManager(t, store, session.WithLimits(16, 25))
			c := &client{h: m.Middleware(app(t))}
			c.do(t, "GET", "/put?a=0123456789") // 13 bytes with its key and quotes
			var putErr error
			h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				s := session.FromContext(r.Context())
				putErr = s.Put("b", "0123456789") // 13 more: 26 > 25
				if renew == "Renew" {
					_ = s.Renew()
				} else {
					_ = s.SetUser("alice")
				}
				io.WriteString(w, "handler")
			}))
			w := (&client{h: h, cookie: c.cookie}).do(t, "GET", "/")
			if putErr != nil {
				t.Fatalf("blind Put within the value limit: %v", putErr)
			}
			if w.Code != http.StatusInternalServerError || strings.Contains(body(w), "handler") || len(w.Result().Cookies()) != 0 {
				t.Fatalf("Put then %s over the session limit: %d %q, cookies %v", renew, w.Code, body(w), w.Result().Cookies())
			}
			if got := body(c.do(t, "GET", "/get?k=b")); got != "false:" {
				t.Fatalf("a value over the session limit was stored: %q", got)
			}
			if got := body(c.do(t, "GET", "/get?k=a")); got != "true:0123456789" {
				t.Fatalf("the session was lost: %q", got)
			}
		})
	}
}
