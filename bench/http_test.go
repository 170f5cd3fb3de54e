package bench

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// wrkScript gives each request the cookie of the next session in turn
// (wrk's arguments after "--": the file of cookies, one per line).
const wrkScript = `
local cookies, i = {}, 0
function init(args)
  for line in io.lines(args[1]) do cookies[#cookies + 1] = line end
end
function request()
  i = i + 1
  return wrk.format(nil, nil, {["Cookie"] = cookies[i % #cookies + 1]})
end
`

// BenchmarkHTTP serves each contestant over real HTTP, a net/http server on
// loopback, and drives it with wrk (one thread, ACTIVEKIT_WRK_CONNECTIONS
// keep-alive connections, by default as many as BenchmarkSessions's
// goroutines, parallelism × GOMAXPROCS: 16 on 2 CPUs, for
// ACTIVEKIT_WRK_DURATION, 10s by default), as a load test of
// a service would: requests/s here include what every request costs a Go service
// whatever its session library (parsing, the response, the sockets), where
// BenchmarkSessions counts the handlers alone. Each sub-benchmark runs wrk
// once, whatever b.N is (run it with -benchtime=1x), and reports wrk's
// requests/s and latency percentiles; it fails if any response is not 200.
// It skips without wrk (scripts/services install puts it there).
func BenchmarkHTTP(b *testing.B) {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		b.Skip("wrk is not installed (scripts/services install installs it)")
	}
	dur := 10 * time.Second
	if s := os.Getenv("ACTIVEKIT_WRK_DURATION"); s != "" {
		if dur, err = time.ParseDuration(s); err != nil {
			b.Fatalf("ACTIVEKIT_WRK_DURATION: %v", err)
		}
	}
	conns := parallelism * runtime.GOMAXPROCS(0)
	if s := os.Getenv("ACTIVEKIT_WRK_CONNECTIONS"); s != "" {
		if conns, err = strconv.Atoi(s); err != nil || conns < 1 {
			b.Fatalf("ACTIVEKIT_WRK_CONNECTIONS: want a positive number, got %q", s)
		}
	}
	addr := redisAddr(b)
	for _, kind := range []string{"/read", "/write"} {
		for _, c := range contestants {
			b.Run("op="+kind[1:]+"/lib="+c.name, func(b *testing.B) { benchHTTP(b, wrk, dur, conns, c, addr, kind) })
		}
	}
}

func benchHTTP(b *testing.B, wrk string, dur time.Duration, conns int, c contestant, addr, path string) {
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	h := c.newInstance(b, addr, uniquePrefix(b, addr, c.name), secret)

	var cookies strings.Builder
	for range 2 * conns {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/seed", nil))
		var value string
		for _, ck := range w.Result().Cookies() {
			if ck.Name == cookieName {
				value = ck.Value
			}
		}
		if w.Code != http.StatusOK || value == "" {
			b.Fatalf("/seed: %d %q, cookies %v", w.Code, w.Body, w.Result().Cookies())
		}
		fmt.Fprintf(&cookies, "%s=%s\n", cookieName, value)
	}
	dir := b.TempDir()
	cookieFile, scriptFile := filepath.Join(dir, "cookies"), filepath.Join(dir, "cookies.lua")
	if err := os.WriteFile(cookieFile, []byte(cookies.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(scriptFile, []byte(wrkScript), 0o600); err != nil {
		b.Fatal(err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	defer func() { _ = srv.Close(); <-done }()

	b.ResetTimer()
	out, err := exec.Command(wrk, "-t1", "-c"+strconv.Itoa(conns), "-d"+dur.String(), "--latency",
		"-s", scriptFile, "http://"+ln.Addr().String()+path, "--", cookieFile).CombinedOutput()
	b.StopTimer()
	if err != nil {
		b.Fatalf("wrk: %v\n%s", err, out)
	}
	res, err := parseWrk(string(out))
	if err != nil {
		b.Fatalf("%v\n%s", err, out)
	}
	if res.bad > 0 || res.socketErrors != "" {
		b.Fatalf("%d of %d responses not 200 %s\n%s", res.bad, res.requests, res.socketErrors, out)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(res.perSecond, "req/s")
	b.ReportMetric(res.p50.Seconds()*1e6, "p50-µs")
	b.ReportMetric(res.p99.Seconds()*1e6, "p99-µs")
}

type wrkResult struct {
	requests, bad int
	perSecond     float64
	p50, p99      time.Duration
	socketErrors  string
}

var (
	wrkRequests = regexp.MustCompile(`(?m)^\s*(\d+) requests in`)
	wrkRate     = regexp.MustCompile(`(?m)^Requests/sec:\s*([0-9.]+)`)
	wrkBad      = regexp.MustCompile(`(?m)^\s*Non-2xx or 3xx responses:\s*(\d+)`)
	wrkSocket   = regexp.MustCompile(`(?m)^\s*Socket errors:.*$`)
	wrkP        = regexp.MustCompile(`(?m)^\s*(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
)

// parseWrk reads what wrk --latency prints.
func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	m := wrkRequests.FindStringSubmatch(out)
	rate := wrkRate.FindStringSubmatch(out)
	if m == nil || rate == nil {
		return r, fmt.Errorf("wrk printed no request count or rate")
	}
	r.requests, _ = strconv.Atoi(m[1])
	r.perSecond, _ = strconv.ParseFloat(rate[1], 64)
	if m := wrkBad.FindStringSubmatch(out); m != nil {
		r.bad, _ = strconv.Atoi(m[1])
	}
	r.socketErrors = wrkSocket.FindString(out)
	for _, m := range wrkP.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[m[3]]
		d := time.Duration(v * float64(unit))
		if m[1] == "50" {
			r.p50 = d
		} else {
			r.p99 = d
		}
	}
	if r.p50 == 0 || r.p99 == 0 {
		return r, fmt.Errorf("wrk printed no latency percentiles")
	}
	return r, nil
}
