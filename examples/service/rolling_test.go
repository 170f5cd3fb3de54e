package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/activekit/activekit/internal/testenv"
)

// The rolling-restart proof. Three instances of the service run as real
// processes behind HAProxy (the Debian package), which probes each one's
// /readyz; a load generator sends steady traffic through HAProxy; each
// instance in turn gets SIGTERM, drains and exits, and is started again. No
// request may fail: not a transport error, not a non-2xx answer, not a
// visit count that skips (each load worker is one session, so its count
// must go up by exactly one per request, whichever instance serves it).
//
// HAProxy is set up to hide nothing: retries 0 and no redispatch, so a
// request sent to an instance that has stopped listening, or whose
// connection is closed under it, reaches the client as a 503 or 502. What
// makes the restart clean is the service's lifecycle alone: readiness fails
// at once, HAProxy takes the instance out at its next check (inter 100ms,
// fall 1), and the drain delay (1s, ten times that) keeps serving until
// then; only then does http.Server.Shutdown stop listening and finish the
// requests in flight.
//
// The control subtest runs the same restarts with no drain delay and
// expects failures: it shows the harness can see what the drain prevents.

// haproxyConfig is the configuration the test runs HAProxy with; the same
// text is in docs/testing.md.
const haproxyConfig = `global
    maxconn 4096
    stats socket {{.Socket}} mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    # Nothing may hide a failed request: no retry, no redispatch.
    retries 0
    no option redispatch

frontend fe
    bind 127.0.0.1:{{.Port}}
    default_backend svc

backend svc
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    # Out after one failed check, back after two passed, checked every 100ms.
    default-server inter 100ms fastinter 100ms downinter 100ms fall 1 rise 2
{{- range $i, $p := .Servers}}
    server s{{$i}} 127.0.0.1:{{$p}} check
{{- end}}
`

const (
	rollingInstances = 3
	rollingWorkers   = 8
	rollingWarmup    = time.Second
)

func TestRollingRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("rolling restart behind HAProxy: skipped with -short")
	}
	haproxy := findHAProxy(t)
	redisAddr := testenv.RedisAddr(t)
	bin := buildService(t)

	t.Run("drain", func(t *testing.T) {
		f := startFleet(t, bin, haproxy, redisAddr, "1s")
		res := f.rollingRestart()
		if res.failures != 0 {
			t.Errorf("%d of %d requests failed during the rolling restart; first ones:\n%s",
				res.failures, res.total+res.failures, strings.Join(res.errs, "\n"))
			f.dumpLogs()
		}
		for _, r := range res.restarts {
			if !r.downBeforeExit {
				t.Errorf("instance %d: HAProxy did not mark it DOWN before it exited", r.slot)
			}
		}
		// Every instance, old and new, served its share.
		for slot := range rollingInstances {
			for gen := range 2 {
				if id := instanceID(slot, gen); res.perInstance[id] == 0 {
					t.Errorf("instance %s served no request: %v", id, res.perInstance)
				}
			}
		}
		if res.total < 500 {
			t.Errorf("only %d requests in %v: not a load", res.total, res.duration)
		}
	})

	t.Run("control without drain delay", func(t *testing.T) {
		f := startFleet(t, bin, haproxy, redisAddr, "-1ns")
		res := f.rollingRestart()
		if res.failures == 0 {
			t.Errorf("no request failed with the drain delay off (%d requests): the harness would not see a bad drain", res.total)
		}
	})
}

// findHAProxy returns the haproxy binary, or skips or fails the test (under
// ACTIVEKIT_REQUIRE_INTEGRATION=1) when there is none.
func findHAProxy(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/haproxy"); err == nil {
		return "/usr/sbin/haproxy"
	}
	testenv.Unavailable(t, "PATH", "no haproxy on PATH or in /usr/sbin; scripts/services install (apt-get install haproxy) provides it")
	return ""
}

// buildService builds this package into a binary, with -race when the test
// itself runs with it.
func buildService(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "svc")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	start := time.Now()
	out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("built the service (race=%v) in %v", raceEnabled, time.Since(start).Round(time.Millisecond))
	return bin
}

// freePorts returns n loopback ports that were free a moment ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		_ = l.Close()
	}
	return ports
}

// proc is a child process, killed at the end of the test if still running.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed once it has exited
	err  error         // what Wait returned; read after done
}

func startProc(t *testing.T, logPath, name string, args []string, env []string) *proc {
	t.Helper()
	out, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		_ = out.Close()
		t.Fatalf("starting %s: %v", name, err)
	}
	p := &proc{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		_ = out.Close()
		close(p.done)
	}()
	t.Cleanup(p.kill)
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill kills the process if it still runs and waits for it.
func (p *proc) kill() {
	if !p.exited() {
		_ = p.cmd.Process.Kill()
	}
	<-p.done
}

// fleet is three instances behind HAProxy.
type fleet struct {
	t       *testing.T
	dir     string
	bin     string
	env     []string
	ports   []int
	procs   []*proc
	gens    []int
	haproxy *proc
	socket  string
	url     string
	cfg     string
}

func instanceID(slot, gen int) string { return fmt.Sprintf("svc-%d-%d", slot, gen) }

func startFleet(t *testing.T, bin, haproxy, redisAddr, drainDelay string) *fleet {
	t.Helper()
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, testenv.Redis(t), prefix)
	ports := freePorts(t, rollingInstances+1)
	f := &fleet{
		t:   t,
		dir: t.TempDir(),
		bin: bin,
		env: []string{
			"ACTIVEKIT_REDIS_ADDR=" + redisAddr,
			"ACTIVEKIT_SESSION_PREFIX=" + prefix,
			"ACTIVEKIT_INSECURE_COOKIE=true",
			"ACTIVEKIT_DRAIN_DELAY=" + drainDelay,
			"ACTIVEKIT_SHUTDOWN_TIMEOUT=5s",
			"ACTIVEKIT_CLOSE_TIMEOUT=2s",
			"ACTIVEKIT_GRACE_PERIOD=10s",
			// A race fails the instance, and so the test; and no 1s
			// pause at exit (the race runtime's default).
			"GORACE=halt_on_error=1 atexit_sleep_ms=0",
		},
		ports: ports[:rollingInstances],
		procs: make([]*proc, rollingInstances),
		gens:  make([]int, rollingInstances),
		url:   fmt.Sprintf("http://127.0.0.1:%d/visits", ports[rollingInstances]),
	}
	for slot := range rollingInstances {
		f.start(slot)
	}
	for slot := range rollingInstances {
		f.waitInstanceReady(slot)
	}

	f.socket = filepath.Join(f.dir, "haproxy.sock")
	var cfg strings.Builder
	err := template.Must(template.New("cfg").Parse(haproxyConfig)).Execute(&cfg, map[string]any{
		"Socket": f.socket, "Port": ports[rollingInstances], "Servers": f.ports,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.cfg = cfg.String()
	cfgPath := filepath.Join(f.dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(f.cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	f.haproxy = startProc(t, filepath.Join(f.dir, "haproxy.log"), haproxy, []string{"-f", cfgPath, "-db"}, nil)
	for slot := range rollingInstances {
		f.waitServer(slot, "UP", nil)
	}
	return f
}

// start starts the next generation of the instance in slot.
func (f *fleet) start(slot int) {
	f.t.Helper()
	id := instanceID(slot, f.gens[slot])
	env := append(slices.Clone(f.env),
		"ACTIVEKIT_INSTANCE_ID="+id,
		"ACTIVEKIT_LISTEN=127.0.0.1:"+strconv.Itoa(f.ports[slot]))
	f.procs[slot] = startProc(f.t, filepath.Join(f.dir, id+".log"), f.bin, nil, env)
}

// waitInstanceReady waits until the instance in slot answers /readyz with
// 200 itself.
func (f *fleet) waitInstanceReady(slot int) {
	f.t.Helper()
	p := f.procs[slot]
	url := fmt.Sprintf("http://127.0.0.1:%d/readyz", f.ports[slot])
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	f.poll(15*time.Second, fmt.Sprintf("instance %d ready", slot), func() bool {
		if p.exited() {
			f.t.Fatalf("instance %d exited while starting: %v\n%s", slot, p.err, tail(p.log))
		}
		resp, err := c.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// poll calls cond every 10ms until it is true, or fails after d.
func (f *fleet) poll(d time.Duration, what string, cond func() bool) {
	f.t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(d)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			f.dumpLogs()
			f.t.Fatalf("%s: not within %v", what, d)
		}
	}
}

// stats returns HAProxy's statistics ("show stat" on the stats socket) by
// proxy and server name, each a map from column name to value.
func (f *fleet) stats() (map[string]map[string]string, error) {
	conn, err := net.DialTimeout("unix", f.socket, time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(conn, "show stat\n"); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(conn)
	if err != nil {
		return nil, err
	}
	r := csv.NewReader(strings.NewReader(strings.TrimPrefix(string(data), "# ")))
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil || len(rows) < 2 {
		return nil, fmt.Errorf("show stat: %q: %v", data, err)
	}
	out := map[string]map[string]string{}
	for _, row := range rows[1:] {
		m := map[string]string{}
		for i, col := range rows[0] {
			if i < len(row) {
				m[col] = row[i]
			}
		}
		out[m["pxname"]+"/"+m["svname"]] = m
	}
	return out, nil
}

// serverStatus is HAProxy's status of the server in slot: UP, DOWN, or a
// transition such as "UP 1/2".
func (f *fleet) serverStatus(slot int) string {
	st, err := f.stats()
	if err != nil {
		return "?"
	}
	return st[fmt.Sprintf("svc/s%d", slot)]["status"]
}

// waitServer waits until HAProxy reports the server in slot as want, or
// until stop is closed (then it returns false).
func (f *fleet) waitServer(slot int, want string, stop <-chan struct{}) bool {
	f.t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(15 * time.Second)
	for {
		if f.haproxy.exited() {
			f.t.Fatalf("haproxy exited: %v\n%s", f.haproxy.err, tail(f.haproxy.log))
		}
		if f.serverStatus(slot) == want {
			return true
		}
		select {
		case <-tick.C:
		case <-stop:
			return false
		case <-deadline:
			f.dumpLogs()
			f.t.Fatalf("HAProxy server s%d: not %s within 15s (now %q)", slot, want, f.serverStatus(slot))
		}
	}
}

// restart is what happened to one instance.
type restart struct {
	slot           int
	downBeforeExit bool          // HAProxy marked it DOWN while it still ran
	stop           time.Duration // SIGTERM to exit
	back           time.Duration // exit to UP in HAProxy
}

// loadResult is what the load generator saw.
type loadResult struct {
	total, failures int64
	errs            []string
	perInstance     map[string]int64
	latencies       []time.Duration
	duration        time.Duration
	restarts        []restart
}

// rollingRestart runs the load, restarts each instance in turn, lets the
// load run on for a moment, and returns what the load saw.
func (f *fleet) rollingRestart() *loadResult {
	f.t.Helper()
	t := f.t
	load := startLoad(t, f.url, rollingWorkers)
	warm := time.NewTimer(rollingWarmup)
	<-warm.C

	var restarts []restart
	for slot := range rollingInstances {
		p := f.procs[slot]
		begin := time.Now()
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		// HAProxy must take the instance out while it still serves.
		r := restart{slot: slot, downBeforeExit: f.waitServer(slot, "DOWN", p.done) && !p.exited()}
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			t.Fatalf("instance %d did not exit within 20s of SIGTERM", slot)
		}
		if p.err != nil {
			t.Errorf("instance %d exited with %v:\n%s", slot, p.err, tail(p.log))
		}
		exited := time.Now()
		r.stop = exited.Sub(begin)
		load.mark(fmt.Sprintf("s%d exited", slot))

		f.gens[slot]++
		f.start(slot)
		f.waitServer(slot, "UP", nil)
		r.back = time.Since(exited)
		load.mark(fmt.Sprintf("s%d up again", slot))
		restarts = append(restarts, r)
	}
	<-time.After(rollingWarmup)
	res := load.stop()
	res.restarts = restarts
	f.report(res)
	return res
}

// report logs the figures of a run.
func (f *fleet) report(res *loadResult) {
	t := f.t
	t.Helper()
	slices.Sort(res.latencies)
	pct := func(p float64) time.Duration {
		if len(res.latencies) == 0 {
			return 0
		}
		return res.latencies[min(len(res.latencies)-1, int(p*float64(len(res.latencies))))]
	}
	n := res.total + res.failures
	t.Logf("requests %d, failed %d, in %v (%.0f req/s, %d workers); latency p50 %v p99 %v max %v",
		n, res.failures, res.duration.Round(time.Millisecond), float64(n)/res.duration.Seconds(), rollingWorkers,
		pct(0.50).Round(10*time.Microsecond), pct(0.99).Round(10*time.Microsecond), pct(1).Round(10*time.Microsecond))
	for _, r := range res.restarts {
		t.Logf("s%d: SIGTERM to exit %v (DOWN in HAProxy before exit: %v), exit to UP %v",
			r.slot, r.stop.Round(time.Millisecond), r.downBeforeExit, r.back.Round(time.Millisecond))
	}
	ids := make([]string, 0, len(res.perInstance))
	for id := range res.perInstance {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var per []string
	for _, id := range ids {
		per = append(per, fmt.Sprintf("%s=%d", id, res.perInstance[id]))
	}
	t.Logf("served by: %s", strings.Join(per, " "))
	if st, err := f.stats(); err == nil {
		fe, be := st["fe/FRONTEND"], st["svc/BACKEND"]
		t.Logf("HAProxy: frontend 2xx %s 5xx %s; backend connection errors %s, response errors %s, retries %s, redispatches %s",
			fe["hrsp_2xx"], fe["hrsp_5xx"], be["econ"], be["eresp"], be["wretr"], be["wredis"])
	}
}

// dumpLogs logs the end of every process's output.
func (f *fleet) dumpLogs() {
	f.t.Helper()
	paths, _ := filepath.Glob(filepath.Join(f.dir, "*.log"))
	for _, p := range paths {
		f.t.Logf("--- %s\n%s", filepath.Base(p), tail(p))
	}
}

// tail returns the last lines of a file.
func tail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-15):], "\n")
}

// load is the load generator: workers, each one session on its own
// keep-alive connection, sending GET /visits back to back.
type load struct {
	start  time.Time
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu  sync.Mutex
	res loadResult
}

func startLoad(t *testing.T, url string, workers int) *load {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{start: time.Now(), cancel: cancel, res: loadResult{perInstance: map[string]int64{}}}
	for w := range workers {
		jar, err := cookiejar.New(nil)
		if err != nil {
			t.Fatal(err)
		}
		tr := &http.Transport{MaxIdleConnsPerHost: 1}
		client := &http.Client{Jar: jar, Transport: tr, Timeout: 5 * time.Second}
		l.wg.Go(func() {
			defer tr.CloseIdleConnections()
			l.worker(ctx, w, client, url)
		})
	}
	t.Cleanup(func() { l.stop() })
	return l
}

func (l *load) worker(ctx context.Context, w int, client *http.Client, url string) {
	var (
		last        int
		total       int64
		lat         []time.Duration
		perInstance = map[string]int64{}
	)
	defer func() {
		l.mu.Lock()
		l.res.total += total
		l.res.latencies = append(l.res.latencies, lat...)
		for id, n := range perInstance {
			l.res.perInstance[id] += n
		}
		l.mu.Unlock()
	}()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			l.fail(w, err.Error())
			return
		}
		begin := time.Now()
		resp, err := client.Do(req)
		if ctx.Err() != nil {
			if err == nil {
				resp.Body.Close()
			}
			return // stopped: the request in flight is not counted
		}
		if err != nil {
			l.fail(w, err.Error())
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if ctx.Err() != nil {
			return
		}
		var v Visits
		switch {
		case err != nil:
			l.fail(w, "reading the body: "+err.Error())
			continue
		case resp.StatusCode != http.StatusOK:
			l.fail(w, fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(body))))
			continue
		case json.Unmarshal(body, &v) != nil:
			l.fail(w, fmt.Sprintf("undecodable body %q", body))
			continue
		case v.Visits != last+1:
			l.fail(w, fmt.Sprintf("visit count %d after %d (from %s): the session lost or double-counted a visit", v.Visits, last, v.Instance))
			last = v.Visits
			continue
		}
		last = v.Visits
		total++
		lat = append(lat, time.Since(begin))
		perInstance[v.Instance]++
	}
}

// fail records a failed request.
func (l *load) fail(w int, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.res.failures++
	if len(l.res.errs) < 40 {
		l.res.errs = append(l.res.errs, fmt.Sprintf("  +%v worker %d: %s", time.Since(l.start).Round(time.Millisecond), w, msg))
	}
}

// mark records an event beside the failures, to place them in time.
func (l *load) mark(event string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.res.errs) < 40 {
		l.res.errs = append(l.res.errs, fmt.Sprintf("  +%v %s", time.Since(l.start).Round(time.Millisecond), event))
	}
}

// stop stops the workers, waits for them and returns the result. Calling
// it again returns the same result.
func (l *load) stop() *loadResult {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.res.duration == 0 {
		l.res.duration = time.Since(l.start)
	}
	return &l.res
}
