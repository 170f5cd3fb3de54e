package session_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/redisstore"
)

// With the default number of attempts, concurrent Updates of one key from
// two instances all succeed: the back-off between attempts spreads them out
// instead of letting some lose every compare-and-set in lockstep (before it,
// 1–4 of 100 concurrent increments ran out of attempts and answered 503).
func TestUpdateUnderContentionDefaultAttempts(t *testing.T) {
	c := testenv.Redis(t)
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, c, prefix)
	var handlers []http.Handler
	for range 2 {
		s, err := redisstore.New(testenv.Redis(t), redisstore.WithPrefix(prefix))
		if err != nil {
			t.Fatal(err)
		}
		m := newManager(t, s) // the default attempts
		mux := http.NewServeMux()
		mux.HandleFunc("/inc", func(w http.ResponseWriter, r *http.Request) {
			err := session.Update(session.FromContext(r.Context()), "n", func(n int, _ bool) (int, error) { return n + 1, nil })
			if err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
			}
		})
		mux.HandleFunc("/get", func(w http.ResponseWriter, r *http.Request) {
			n, _, err := session.Get[int](session.FromContext(r.Context()), "n")
			if err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprint(w, n)
		})
		handlers = append(handlers, m.Middleware(mux))
	}
	var next atomic.Uint64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handlers[next.Add(1)%2].ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	hc := srv.Client()

	// A session to share: the first request creates it.
	resp, err := hc.Get(srv.URL + "/inc")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("first request: %v %v", resp, err)
	}
	resp.Body.Close()
	cookies := resp.Cookies()

	const workers, each = 24, 5
	var failed atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				req, _ := http.NewRequest("GET", srv.URL+"/inc", nil)
				for _, ck := range cookies {
					req.AddCookie(ck)
				}
				resp, err := hc.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d concurrent updates ran out of attempts", n, workers*each)
	}
	req, _ := http.NewRequest("GET", srv.URL+"/get", nil)
	for _, ck := range cookies {
		req.AddCookie(ck)
	}
	resp, err = hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got int
	fmt.Fscan(resp.Body, &got)
	if want := 1 + workers*each - int(failed.Load()); got != want {
		t.Errorf("counter %d, want %d: an acknowledged update was lost", got, want)
	}
}
