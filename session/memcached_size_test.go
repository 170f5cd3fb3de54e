package session_test

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/memcachedstore"
)

// TestSessionLimitUnderConcurrencyMemcached: two requests that read a
// session, then each put a key that fits on its own but not with the
// other's, do not leave the session over its limit on Memcached: the check
// a Put makes is against what its request read, so the store must make it
// too, atomically with the write (as redisstore and memstore do).
func TestSessionLimitUnderConcurrencyMemcached(t *testing.T) {
	c := memcache.New(testenv.MemcachedAddr(t))
	t.Cleanup(func() { _ = c.Close() })
	s, err := memcachedstore.New(c, memcachedstore.WithPrefix(testenv.Name(t)+":"))
	if err != nil {
		t.Fatal(err)
	}
	const limit = 150
	m := newManager(t, s, session.WithLimits(100, limit))
	var read sync.WaitGroup
	read.Add(2)
	proceed := make(chan struct{})
	mux := http.NewServeMux()
	mux.Handle("/", app(t))
	mux.HandleFunc("/add", func(w http.ResponseWriter, r *http.Request) {
		sess := session.FromContext(r.Context())
		if _, _, err := session.Get[string](sess, "a"); err != nil {
			t.Error(err)
		}
		read.Done()
		<-proceed
		// 1 + 61 bytes: fits with a (51 bytes), not with the other's too.
		if err := sess.Put(r.URL.Query().Get("k"), strings.Repeat("x", 59)); err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		io.WriteString(w, "ok")
	})
	h := m.Middleware(mux)
	browser := &client{h: h}
	browser.do(t, "GET", "/put?a="+strings.Repeat("x", 48))
	b := serveAsync(h, "/add?k=b", browser.cookie)
	d := serveAsync(h, "/add?k=d", browser.cookie)
	read.Wait()
	close(proceed)
	<-b
	<-d
	rec, found, err := s.Load(t.Context(), storeID(t, browser.cookie.Value), 0)
	if err != nil || !found {
		t.Fatalf("Load: found=%v %v", found, err)
	}
	size := 0
	for k, v := range rec.Values {
		size += len(k) + len(v.Data)
	}
	if size > limit {
		t.Fatalf("session of %d bytes stored, limit %d", size, limit)
	}
}
