package bench

import (
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync/atomic"
	"testing"
)

// parallelism: b.RunParallel runs parallelism × GOMAXPROCS goroutines, each
// a user with a session of its own, sending requests back to back.
const parallelism = 8

// sink is a reusable http.ResponseWriter that keeps only the status and the
// body's length, so that each contestant's figures hold its own cost and not
// a recorder's.
type sink struct {
	h    http.Header
	code int
	n    int
}

func (w *sink) Header() http.Header { return w.h }

func (w *sink) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

func (w *sink) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	w.n += len(p)
	return len(p), nil
}

func (w *sink) reset() { clear(w.h); w.code, w.n = 0, 0 }

// BenchmarkSessions times one read-only and one modifying request through
// each contestant's handler in process (no HTTP parsing), against the same
// Redis, from parallel users.
func BenchmarkSessions(b *testing.B) {
	addr := redisAddr(b)
	for _, kind := range []struct{ path, body string }{{"/read", readBody}, {"/write", writeBody}} {
		for _, c := range contestants {
			b.Run("op="+kind.path[1:]+"/lib="+c.name, func(b *testing.B) { benchRequest(b, c, addr, kind.path, kind.body) })
		}
	}
}

func benchRequest(b *testing.B, c contestant, addr, path, want string) {
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	h := c.newInstance(b, addr, uniquePrefix(b, addr, c.name), secret)

	// One session per goroutine (and some to spare).
	cookies := make([]*http.Cookie, 2*parallelism*runtime.GOMAXPROCS(0))
	for i := range cookies {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/seed", nil))
		for _, ck := range w.Result().Cookies() {
			if ck.Name == cookieName {
				cookies[i] = &http.Cookie{Name: ck.Name, Value: ck.Value}
			}
		}
		if w.Code != http.StatusOK || cookies[i] == nil {
			b.Fatalf("/seed: %d %q, cookies %v", w.Code, w.Body, w.Result().Cookies())
		}
	}

	var next, bad atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(parallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		base := httptest.NewRequest(http.MethodGet, path, nil)
		base.AddCookie(cookies[int(next.Add(1))%len(cookies)])
		w := &sink{h: http.Header{}}
		for pb.Next() {
			// A fresh request each time: gorilla/sessions keeps its
			// per-request registry by overwriting *r.
			r := new(http.Request)
			*r = *base
			w.reset()
			h.ServeHTTP(w, r)
			if w.code != http.StatusOK || w.n != len(want) {
				bad.Add(1)
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	if n := bad.Load(); n > 0 {
		b.Fatalf("%d of %d requests failed", n, b.N)
	}
}
