package bench

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alexedwards/scs/redisstore"
	"github.com/alexedwards/scs/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/gorilla/sessions"
	goredis "github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/session"
	akredis "github.com/activekit/activekit/session/redisstore"
)

// The same application is written over each library, as its users would
// write it. Every instance serves:
//
//	/seed     create a session: user, cart, theme and a CSRF token
//	/read     read-only: answer the session's user ("alice")
//	/write    modifying: set "last" to the time (answer "ok")
//	/put?i=N  set key "k:N" to N (TestLostUpdates, workload A)
//	/inc      counter += 1 (TestLostUpdates, workload B)
//	/count    "K C": K keys named "k:*", and the counter C
//
// Every library gets the same timeouts: a session ends after 30 minutes
// unused or 24 hours after it began.
const (
	cookieName = "session"
	idle       = 30 * time.Minute
	absolute   = 24 * time.Hour
	readBody   = "alice"
	writeBody  = "ok"
)

var cart = []string{"book", "pen", "lamp"}

// A contestant builds instances of the application over one library.
type contestant struct {
	name string
	// newInstance builds one instance with its own Redis client and store,
	// closed at the end of tb. Instances of one fleet share prefix and secret
	// (what a fleet shares: the key space and the cookie-signing key).
	newInstance func(tb testing.TB, addr, prefix string, secret []byte) http.Handler
	// full: it serves /put, /inc and /count as well (the bare handler does not).
	full bool
	// ours: TestLostUpdates fails if it loses an update.
	ours bool
}

var contestants = []contestant{
	{name: "activekit", newInstance: newActivekit, full: true, ours: true},
	{name: "scs", newInstance: newSCS, full: true},
	{name: "gorilla", newInstance: newGorilla, full: true},
	{name: "bare", newInstance: newBare},
	{name: "floor", newInstance: newFloor},
}

func fail(w http.ResponseWriter, err error) {
	http.Error(w, err.Error(), http.StatusInternalServerError)
}

func queryInt(r *http.Request, name string) (int, error) {
	return strconv.Atoi(r.URL.Query().Get(name))
}

func countK(keys []string) int {
	n := 0
	for _, k := range keys {
		if strings.HasPrefix(k, "k:") {
			n++
		}
	}
	return n
}

// newActivekit: activekit's Manager over session/redisstore.
func newActivekit(tb testing.TB, addr, prefix string, _ []byte) http.Handler {
	store, err := akredis.New(newRedis(tb, addr), akredis.WithPrefix(prefix))
	if err != nil {
		tb.Fatal(err)
	}
	m, err := session.NewManager(store,
		session.WithIdleTimeout(idle), session.WithAbsoluteTimeout(absolute),
		session.WithCookie(session.CookieConfig{Name: cookieName}), session.WithInsecureCookie())
	if err != nil {
		tb.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/seed", func(w http.ResponseWriter, r *http.Request) {
		s := session.FromContext(r.Context())
		if err := errors.Join(s.Put("user", "alice"), s.Put("cart", cart), s.Put("theme", "dark"), s.Put("csrf", randomHex(16))); err != nil {
			fail(w, err)
		}
	})
	mux.HandleFunc("/read", func(w http.ResponseWriter, r *http.Request) {
		user, _, err := session.Get[string](session.FromContext(r.Context()), "user")
		if err != nil {
			fail(w, err)
			return
		}
		io.WriteString(w, user)
	})
	mux.HandleFunc("/write", func(w http.ResponseWriter, r *http.Request) {
		if err := session.FromContext(r.Context()).Put("last", time.Now().UnixNano()); err != nil {
			fail(w, err)
			return
		}
		io.WriteString(w, writeBody)
	})
	mux.HandleFunc("/put", func(w http.ResponseWriter, r *http.Request) {
		i, err := queryInt(r, "i")
		if err == nil {
			err = session.FromContext(r.Context()).Put("k:"+strconv.Itoa(i), i)
		}
		if err != nil {
			fail(w, err)
		}
	})
	mux.HandleFunc("/inc", func(w http.ResponseWriter, r *http.Request) {
		// Update is a compare-and-set that retries on its own (16 attempts
		// by default); 64 requests racing on one key can still exhaust
		// that (it returns a *ConflictError), so the handler tries again.
		s := session.FromContext(r.Context())
		var err error
		for range 64 {
			err = session.Update(s, "counter", func(n int, _ bool) (int, error) { return n + 1, nil })
			if !errors.Is(err, session.ErrConflict) {
				break
			}
		}
		if err != nil {
			fail(w, err)
		}
	})
	mux.HandleFunc("/count", func(w http.ResponseWriter, r *http.Request) {
		s := session.FromContext(r.Context())
		keys, err := s.Keys()
		if err != nil {
			fail(w, err)
			return
		}
		n, _, err := session.Get[int](s, "counter")
		if err != nil {
			fail(w, err)
			return
		}
		fmt.Fprintf(w, "%d %d", countK(keys), n)
	})
	return m.Middleware(mux)
}

// newSCS: alexedwards/scs v2 with its Redis store (redigo pool), idle
// timeout on.
func newSCS(tb testing.TB, addr, prefix string, _ []byte) http.Handler {
	pool := &redis.Pool{
		MaxIdle: poolSize, MaxActive: poolSize, Wait: true, IdleTimeout: 4 * time.Minute,
		Dial: func() (redis.Conn, error) { return redis.Dial("tcp", addr) },
	}
	tb.Cleanup(func() { _ = pool.Close() })
	// scs.New starts a cleanup goroutine for its default in-memory store,
	// which is replaced at once. It cannot be stopped reliably (StopCleanup
	// races with the goroutine that sets up its channel and does nothing if
	// called first), so TestMain tells goleak to ignore it.
	sm := scs.New()
	sm.Store = redisstore.NewWithPrefix(pool, prefix)
	sm.IdleTimeout = idle
	sm.Lifetime = absolute
	sm.Cookie.Name = cookieName
	sm.ErrorFunc = func(w http.ResponseWriter, _ *http.Request, err error) { fail(w, err) }

	mux := http.NewServeMux()
	mux.HandleFunc("/seed", func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		sm.Put(ctx, "user", "alice")
		sm.Put(ctx, "cart", cart)
		sm.Put(ctx, "theme", "dark")
		sm.Put(ctx, "csrf", randomHex(16))
	})
	mux.HandleFunc("/read", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, sm.GetString(r.Context(), "user"))
	})
	mux.HandleFunc("/write", func(w http.ResponseWriter, r *http.Request) {
		sm.Put(r.Context(), "last", time.Now().UnixNano())
		io.WriteString(w, writeBody)
	})
	mux.HandleFunc("/put", func(w http.ResponseWriter, r *http.Request) {
		i, err := queryInt(r, "i")
		if err != nil {
			fail(w, err)
			return
		}
		sm.Put(r.Context(), "k:"+strconv.Itoa(i), i)
	})
	mux.HandleFunc("/inc", func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		sm.Put(ctx, "counter", sm.GetInt(ctx, "counter")+1)
	})
	mux.HandleFunc("/count", func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		fmt.Fprintf(w, "%d %d", countK(sm.Keys(ctx)), sm.GetInt(ctx, "counter"))
	})
	return sm.LoadAndSave(mux)
}

// newGorilla: gorilla/sessions with a Redis store (gorillaRedisStore). It
// has no middleware: each handler gets the session and, if it changed it,
// saves it.
func newGorilla(tb testing.TB, addr, prefix string, secret []byte) http.Handler {
	store := newGorillaRedisStore(newRedis(tb, addr), prefix, idle, secret)
	// handle gets the session, runs fn, and saves the session when fn says
	// it changed it.
	handle := func(fn func(w http.ResponseWriter, r *http.Request, s *sessions.Session) (save bool, err error)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			s, err := store.Get(r, cookieName)
			if err != nil {
				fail(w, err)
				return
			}
			save, err := fn(w, r, s)
			if err == nil && save {
				err = s.Save(r, w)
			}
			if err != nil {
				fail(w, err)
			}
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/seed", handle(func(_ http.ResponseWriter, _ *http.Request, s *sessions.Session) (bool, error) {
		s.Values["user"] = "alice"
		s.Values["cart"] = cart
		s.Values["theme"] = "dark"
		s.Values["csrf"] = randomHex(16)
		return true, nil
	}))
	mux.Handle("/read", handle(func(w http.ResponseWriter, _ *http.Request, s *sessions.Session) (bool, error) {
		user, _ := s.Values["user"].(string)
		io.WriteString(w, user)
		return false, nil
	}))
	mux.Handle("/write", handle(func(w http.ResponseWriter, r *http.Request, s *sessions.Session) (bool, error) {
		s.Values["last"] = time.Now().UnixNano()
		if err := s.Save(r, w); err != nil { // before the body, which sends the headers
			return false, err
		}
		io.WriteString(w, writeBody)
		return false, nil
	}))
	mux.Handle("/put", handle(func(_ http.ResponseWriter, r *http.Request, s *sessions.Session) (bool, error) {
		i, err := queryInt(r, "i")
		if err != nil {
			return false, err
		}
		s.Values["k:"+strconv.Itoa(i)] = i
		return true, nil
	}))
	mux.Handle("/inc", handle(func(_ http.ResponseWriter, _ *http.Request, s *sessions.Session) (bool, error) {
		n, _ := s.Values["counter"].(int)
		s.Values["counter"] = n + 1
		return true, nil
	}))
	mux.Handle("/count", handle(func(w http.ResponseWriter, _ *http.Request, s *sessions.Session) (bool, error) {
		keys := make([]string, 0, len(s.Values))
		for k := range s.Values {
			if k, ok := k.(string); ok {
				keys = append(keys, k)
			}
		}
		n, _ := s.Values["counter"].(int)
		fmt.Fprintf(w, "%d %d", countK(keys), n)
		return false, nil
	}))
	return mux
}

// newBare: no session library; one Redis round trip per request, keyed by
// the cookie (the floor every session library stands on).
func newBare(tb testing.TB, addr, prefix string, _ []byte) http.Handler {
	c := newRedis(tb, addr)
	cookie := func(w http.ResponseWriter, r *http.Request) (string, bool) {
		ck, err := r.Cookie(cookieName)
		if err != nil {
			http.Error(w, "no session", http.StatusUnauthorized)
			return "", false
		}
		return ck.Value, true
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/seed", func(w http.ResponseWriter, r *http.Request) {
		id := randomHex(16)
		if err := c.Set(r.Context(), prefix+id, "alice", idle).Err(); err != nil {
			fail(w, err)
			return
		}
		http.SetCookie(w, &http.Cookie{Name: cookieName, Value: id, Path: "/", HttpOnly: true})
	})
	mux.HandleFunc("/read", func(w http.ResponseWriter, r *http.Request) {
		id, ok := cookie(w, r)
		if !ok {
			return
		}
		user, err := c.Get(r.Context(), prefix+id).Result()
		if err != nil {
			fail(w, err)
			return
		}
		io.WriteString(w, user)
	})
	mux.HandleFunc("/write", func(w http.ResponseWriter, r *http.Request) {
		id, ok := cookie(w, r)
		if !ok {
			return
		}
		if err := c.Set(r.Context(), prefix+id+":last", time.Now().UnixNano(), idle).Err(); err != nil {
			fail(w, err)
			return
		}
		io.WriteString(w, writeBody)
	})
	return mux
}

// floorScript is the least a write to a hash-per-session record can run
// atomically: refuse to resurrect a session that is gone, then set the
// field. It keeps no version, checks no size and moves no expiry.
var floorScript = goredis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
`)

// newFloor: not a library but the floor under any store that keeps a
// session as one Redis hash with a version per key, as activekit does, by
// hand: a read is one raw HGETALL of a hash with the fields activekit's
// record of the same session has (version, created, absolute deadline,
// size and the four values, each "<version>:<JSON>") and answers the user
// value as stored; a write is one EVALSHA of floorScript. The difference
// between it and bare is the price of the hash and of Lua; between
// activekit and it, of everything activekit does on top (the middleware,
// the token's hash, decoding, compare-and-set, the size limit, expiry).
func newFloor(tb testing.TB, addr, prefix string, _ []byte) http.Handler {
	c := newRedis(tb, addr)
	key := func(w http.ResponseWriter, r *http.Request) (string, bool) {
		ck, err := r.Cookie(cookieName)
		if err != nil {
			http.Error(w, "no session", http.StatusUnauthorized)
			return "", false
		}
		return prefix + ck.Value, true
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/seed", func(w http.ResponseWriter, r *http.Request) {
		id := randomHex(16)
		now := time.Now()
		k := prefix + id
		if _, err := c.TxPipelined(r.Context(), func(p goredis.Pipeliner) error {
			p.HSet(r.Context(), k, "_v", 4, "_c", now.UnixMilli(), "_a", now.Add(absolute).UnixMilli(), "_s", 80,
				"k:user", `1:"alice"`, "k:cart", `2:["book","pen","lamp"]`, "k:theme", `3:"dark"`,
				"k:csrf", `4:"`+randomHex(16)+`"`)
			p.PExpire(r.Context(), k, idle)
			return nil
		}); err != nil {
			fail(w, err)
			return
		}
		http.SetCookie(w, &http.Cookie{Name: cookieName, Value: id, Path: "/", HttpOnly: true})
	})
	mux.HandleFunc("/read", func(w http.ResponseWriter, r *http.Request) {
		k, ok := key(w, r)
		if !ok {
			return
		}
		h, err := c.HGetAll(r.Context(), k).Result()
		if err != nil {
			fail(w, err)
			return
		}
		u, ok := h["k:user"]
		if !ok || !strings.HasPrefix(u, `1:"`) || len(u) < 4 {
			fail(w, fmt.Errorf("no user in %v", h))
			return
		}
		io.WriteString(w, u[3:len(u)-1])
	})
	mux.HandleFunc("/write", func(w http.ResponseWriter, r *http.Request) {
		k, ok := key(w, r)
		if !ok {
			return
		}
		n, err := floorScript.Run(r.Context(), c, []string{k}, "k:last", "5:"+strconv.FormatInt(time.Now().UnixNano(), 10)).Int()
		if err == nil && n == 0 {
			err = errors.New("session gone")
		}
		if err != nil {
			fail(w, err)
			return
		}
		io.WriteString(w, writeBody)
	})
	return mux
}
