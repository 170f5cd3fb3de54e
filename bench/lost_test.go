package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// workers bounds the concurrent requests of TestLostUpdates.
const workers = 64

// fleet is two instances of one contestant's application, each with its own
// Redis client and its own HTTP server, behind a round-robin client with
// keep-alive: one user's concurrent requests land on both.
type fleet struct {
	urls   []string
	next   atomic.Uint64
	client *http.Client
}

func newFleet(t *testing.T, c contestant, addr string) *fleet {
	t.Helper()
	prefix := uniquePrefix(t, addr, c.name)
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	tr := &http.Transport{MaxIdleConns: 2 * workers, MaxIdleConnsPerHost: workers}
	t.Cleanup(tr.CloseIdleConnections)
	f := &fleet{client: &http.Client{Transport: tr, Timeout: time.Minute}}
	for range 2 {
		srv := httptest.NewServer(c.newInstance(t, addr, prefix, secret))
		t.Cleanup(srv.Close)
		f.urls = append(f.urls, srv.URL)
	}
	return f
}

// get sends GET path to the next instance and returns the status and body.
func (f *fleet) get(ctx context.Context, path string, cookie *http.Cookie) (int, string, []*http.Cookie, error) {
	url := f.urls[f.next.Add(1)%uint64(len(f.urls))] + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", nil, err
	}
	if cookie != nil {
		req.AddCookie(cookie)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Cookies(), err
}

// seed creates a session and returns its cookie.
func (f *fleet) seed(t *testing.T) *http.Cookie {
	t.Helper()
	code, body, cookies, err := f.get(t.Context(), "/seed", nil)
	if err != nil || code != http.StatusOK {
		t.Fatalf("/seed: %d %q %v", code, body, err)
	}
	for _, c := range cookies {
		if c.Name == cookieName {
			return &http.Cookie{Name: c.Name, Value: c.Value}
		}
	}
	t.Fatalf("/seed set no %q cookie: %v", cookieName, cookies)
	return nil
}

// count returns the session's "k:*" keys and its counter.
func (f *fleet) count(t *testing.T, cookie *http.Cookie) (keys, counter int) {
	t.Helper()
	code, body, _, err := f.get(t.Context(), "/count", cookie)
	if err != nil || code != http.StatusOK {
		t.Fatalf("/count: %d %q %v", code, body, err)
	}
	if _, err := fmt.Sscanf(body, "%d %d", &keys, &counter); err != nil {
		t.Fatalf("/count: %q: %v", body, err)
	}
	return keys, counter
}

// hammer sends n requests, path(i) for i in [0, n), from workers concurrent
// clients, all with cookie. It returns how many did not answer 200.
func (f *fleet) hammer(t *testing.T, n int, cookie *http.Cookie, path func(i int) string) (failed int64, elapsed time.Duration) {
	t.Helper()
	var (
		wg    sync.WaitGroup
		bad   atomic.Int64
		first sync.Once
		work  = make(chan int)
	)
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for i := range work {
				code, body, _, err := f.get(t.Context(), path(i), cookie)
				if err != nil || code != http.StatusOK {
					bad.Add(1)
					first.Do(func() { t.Logf("first failure: %s: %d %q %v", path(i), code, strings.TrimSpace(body), err) })
				}
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	return bad.Load(), time.Since(start)
}

type lostResult struct {
	name                   string
	puts, putsLost, putErr int64
	putTime                time.Duration
	incs, incsLost, incErr int64
	incTime                time.Duration
}

// TestLostUpdates counts the updates each library loses when one user's
// concurrent requests land on two instances. Workload A: n requests each set
// a different key of one session. Workload B: incs requests each increment
// one counter (activekit with its compare-and-set Update; the others as their
// users write it: get, +1, put). activekit must lose nothing; the others'
// figures are only logged.
func TestLostUpdates(t *testing.T) {
	addr := redisAddr(t)
	n, incs := 10_000, 2_000
	if testing.Short() {
		n, incs = 1_000, 500
	}
	var results []lostResult
	for _, c := range contestants {
		if !c.full {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			f := newFleet(t, c, addr)
			res := lostResult{name: c.name, puts: int64(n), incs: int64(incs)}

			cookie := f.seed(t)
			res.putErr, res.putTime = f.hammer(t, n, cookie, func(i int) string { return fmt.Sprintf("/put?i=%d", i) })
			keys, _ := f.count(t, cookie)
			res.putsLost = int64(n - keys)

			cookie = f.seed(t)
			res.incErr, res.incTime = f.hammer(t, incs, cookie, func(int) string { return "/inc" })
			_, counter := f.count(t, cookie)
			res.incsLost = int64(incs - counter)

			t.Logf("A: %d puts of different keys: %d present, %d lost, %d failed, %v; B: %d increments: counter %d, %d lost, %d failed, %v",
				n, keys, res.putsLost, res.putErr, res.putTime.Round(time.Millisecond),
				incs, counter, res.incsLost, res.incErr, res.incTime.Round(time.Millisecond))
			if c.ours {
				if res.putErr != 0 || res.incErr != 0 {
					t.Errorf("%d puts and %d increments failed", res.putErr, res.incErr)
				}
				if res.putsLost != 0 {
					t.Errorf("workload A: %d of %d updates of different keys lost", res.putsLost, n)
				}
				if res.incsLost != 0 {
					t.Errorf("workload B: counter %d after %d increments: %d lost", counter, incs, res.incsLost)
				}
			}
			results = append(results, res)
		})
	}
	var b strings.Builder
	b.WriteString("\n| library | A: puts lost | A: failed | A: time | B: increments lost | B: failed | B: time |\n|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		fmt.Fprintf(&b, "| %s | %d of %d (%.1f%%) | %d | %v | %d of %d (%.1f%%) | %d | %v |\n",
			r.name, r.putsLost, r.puts, 100*float64(r.putsLost)/float64(r.puts), r.putErr, r.putTime.Round(time.Millisecond),
			r.incsLost, r.incs, 100*float64(r.incsLost)/float64(r.incs), r.incErr, r.incTime.Round(time.Millisecond))
	}
	t.Log(b.String())
}
