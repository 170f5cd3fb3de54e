package redisstore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/redisstore"
)

// sentinelGroup inspects and steers the Sentinel group of the test
// environment.
type sentinelGroup struct {
	sentinels []*redis.SentinelClient
	master    string
}

func newSentinelGroup(t *testing.T) *sentinelGroup {
	t.Helper()
	addrs, master := testenv.RedisSentinel(t)
	g := &sentinelGroup{master: master}
	for _, a := range addrs {
		sc := redis.NewSentinelClient(&redis.Options{Addr: a, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: 2 * time.Second})
		t.Cleanup(func() { _ = sc.Close() })
		g.sentinels = append(g.sentinels, sc)
	}
	return g
}

// state returns the master every Sentinel agrees on, provided it has an
// online replica that every Sentinel sees as healthy, and the name of the
// scripts/services server that runs it ("redis-primary", or "redis-replica"
// after a failover). An error says the group is not settled.
func (g *sentinelGroup) state(ctx context.Context) (addr, service string, err error) {
	for _, sc := range g.sentinels {
		hp, err := sc.GetMasterAddrByName(ctx, g.master).Result()
		if err != nil {
			return "", "", fmt.Errorf("sentinel: %w", err)
		}
		a := hp[0] + ":" + hp[1]
		if addr != "" && a != addr {
			return "", "", fmt.Errorf("sentinels disagree: %s and %s", addr, a)
		}
		addr = a
		replicas, err := sc.Replicas(ctx, g.master).Result()
		if err != nil {
			return "", "", fmt.Errorf("sentinel replicas: %w", err)
		}
		healthy := 0
		for _, r := range replicas {
			if r["flags"] == "slave" && r["master-link-status"] == "ok" {
				healthy++
			}
		}
		if healthy == 0 {
			return "", "", fmt.Errorf("no healthy replica of %s seen by a sentinel: %v", addr, replicas)
		}
	}
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	repl, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return "", "", fmt.Errorf("master %s: %w", addr, err)
	}
	if !strings.Contains(repl, "role:master") || !strings.Contains(repl, "state=online") {
		return "", "", fmt.Errorf("master %s has no online replica:\n%s", addr, repl)
	}
	srv, err := c.Info(ctx, "server").Result()
	if err != nil {
		return "", "", fmt.Errorf("master %s: %w", addr, err)
	}
	// scripts/services keeps each server's configuration in a directory
	// named after the service.
	for _, name := range []string{"redis-primary", "redis-replica"} {
		if strings.Contains(srv, "/"+name+"/") {
			return addr, name, nil
		}
	}
	return addr, "", nil
}

// waitHealthy polls until the group is settled with a healthy replica, and
// returns the master's address and service name.
func (g *sentinelGroup) waitHealthy(t *testing.T, within time.Duration) (string, string) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		addr, service, err := g.state(ctx)
		cancel()
		if err == nil {
			return addr, service
		}
		if time.Now().After(deadline) {
			t.Fatalf("Sentinel group not healthy after %v: %v", within, err)
		}
		<-tick.C
	}
}

// failback makes "redis-primary" the master again, by a coordinated
// failover (SENTINEL FAILOVER, which loses nothing), once the group is
// healthy; other tests then find the group as scripts/services made it.
func (g *sentinelGroup) failback(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	asked := false
	for {
		if _, service := g.waitHealthy(t, time.Until(deadline)); service == "redis-primary" {
			return
		}
		if !asked {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			err := g.sentinels[0].Failover(ctx, g.master).Err()
			cancel()
			if err != nil {
				t.Fatalf("SENTINEL FAILOVER: %v", err)
			}
			asked = true
		}
		if time.Now().After(deadline) {
			t.Fatal("redis-primary not the master 45s after SENTINEL FAILOVER")
		}
	}
}

// services runs scripts/services (verb "start" or "stop") on a server
// whose lock the test already holds through testenv.StopService; calling
// testenv.StartService instead would release the lock before the failback.
func services(t *testing.T, verb, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, os.Getenv(testenv.EnvServicesControl), verb, name).CombinedOutput()
	if err != nil {
		t.Fatalf("services %s %s: %v\n%s", verb, name, err, out)
	}
}

// failoverClient is one browser: it keeps its session cookie and checks
// every response against what it was acknowledged before.
type failoverClient struct {
	srv    *httptest.Server
	hc     *http.Client
	cookie string
	acked  []string // keys whose write was answered 200
	seq    int
}

type outcome struct {
	status int
	keys   []string
	err    error
}

func (c *failoverClient) do(ctx context.Context, method, path string) outcome {
	req, err := http.NewRequestWithContext(ctx, method, c.srv.URL+path, nil)
	if err != nil {
		return outcome{err: err}
	}
	if c.cookie != "" {
		req.Header.Set("Cookie", c.cookie)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return outcome{err: err}
	}
	defer resp.Body.Close()
	out := outcome{status: resp.StatusCode}
	if sc := resp.Header.Values("Set-Cookie"); len(sc) > 0 {
		if c.cookie != "" {
			// The store never loses a session it acknowledged, so the
			// Manager must never issue or clear a cookie here.
			out.err = fmt.Errorf("%s %s answered %d with Set-Cookie %q for an existing session", method, path, resp.StatusCode, sc)
			return out
		}
		c.cookie = strings.SplitN(sc[0], ";", 2)[0]
	}
	switch resp.StatusCode {
	case http.StatusOK:
		if err := json.NewDecoder(resp.Body).Decode(&out.keys); err != nil {
			out.err = fmt.Errorf("%s %s: body: %w", method, path, err)
		}
	case http.StatusServiceUnavailable:
	default:
		out.err = fmt.Errorf("%s %s answered %d, want 200 or 503", method, path, resp.StatusCode)
	}
	return out
}

// put writes a new key and records it when acknowledged.
func (c *failoverClient) put(ctx context.Context) outcome {
	c.seq++
	k := "k" + strconv.Itoa(c.seq)
	o := c.do(ctx, "POST", "/put?k="+k)
	if o.err == nil && o.status == http.StatusOK {
		c.acked = append(c.acked, k)
	}
	return o
}

// read checks that a 200 shows every key acknowledged so far.
func (c *failoverClient) read(ctx context.Context) outcome {
	o := c.do(ctx, "GET", "/keys")
	if o.err == nil && o.status == http.StatusOK {
		have := make(map[string]bool, len(o.keys))
		for _, k := range o.keys {
			have[k] = true
		}
		var lost []string
		for _, k := range c.acked {
			if !have[k] {
				lost = append(lost, k)
			}
		}
		if len(lost) > 0 {
			o.err = fmt.Errorf("read answered 200 without %d acknowledged keys %v (session has %d keys)", len(lost), lost, len(o.keys))
		}
	}
	return o
}

// A Sentinel failover under traffic. The primary ("redis-primary" of
// scripts/services) is killed while workers
// write and read their sessions through a Manager whose store waits for one
// replica per write (WithWait(1, ...)). Expected:
//
//   - every write answered 200 survives the failover: it was on the replica
//     that Sentinel promotes;
//   - requests in the gap are answered 503, never with a new (or cleared)
//     session cookie, never with a 200 that lacks acknowledged keys;
//   - reads recover by themselves once the replica is promoted;
//   - writes do not: the new master has no replica until the old primary
//     comes back, so WAIT 1 times out and writes keep failing closed (503);
//     acknowledging them would promise durability no replica gives. They
//     recover when the old primary rejoins as a replica.
func TestSentinelFailoverUnderTraffic(t *testing.T) {
	if testing.Short() {
		t.Skip("kills the Sentinel group's primary: skipped with -short")
	}
	g := newSentinelGroup(t)
	ctx := t.Context()

	// Other processes' tests share the group under a lock named
	// "redis-primary", which testenv.StopService(t, "redis-primary") takes
	// exclusively until the test ends. The test holds it from the kill to
	// the end, restarting the server itself (services) so that the failback
	// below also runs under it.
	locked := false
	lock := func() {
		if !locked {
			testenv.StopService(t, "redis-primary") // also restarts it at the very end if need be
			locked = true
			t.Cleanup(func() { // runs before the lock is released
				services(t, "start", "redis-primary")
				g.failback(t)
			})
		}
	}
	oldMaster, service := g.waitHealthy(t, 30*time.Second)
	if service != "redis-primary" {
		// An earlier failover left the other server in charge: take the
		// lock (stopping redis-primary, a replica now), start it again, and
		// make it the master by a coordinated failover.
		lock()
		services(t, "start", "redis-primary")
		g.failback(t)
		oldMaster, _ = g.waitHealthy(t, 30*time.Second)
	}

	c := testenv.RedisFailover(t)
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, c, prefix)
	store, err := redisstore.New(c, redisstore.WithPrefix(prefix), redisstore.WithWait(1, 500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	m, err := session.NewManager(store, session.WithInsecureCookie())
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	keys := func(w http.ResponseWriter, s *session.Session) {
		ks, err := s.Keys()
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable) // the store failed
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(ks)
	}
	mux.HandleFunc("POST /put", func(w http.ResponseWriter, r *http.Request) {
		s := session.FromContext(r.Context())
		if err := s.Put(r.URL.Query().Get("k"), true); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		keys(w, s)
	})
	mux.HandleFunc("GET /keys", func(w http.ResponseWriter, r *http.Request) {
		keys(w, session.FromContext(r.Context()))
	})
	srv := httptest.NewServer(m.Middleware(mux))
	t.Cleanup(srv.Close)
	hc := &http.Client{Timeout: 15 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)

	newClient := func() *failoverClient {
		fc := &failoverClient{srv: srv, hc: hc}
		if o := fc.put(ctx); o.err != nil || o.status != http.StatusOK || fc.cookie == "" {
			t.Fatalf("first write: %d, %v, cookie %q", o.status, o.err, fc.cookie)
		}
		return fc
	}

	// Steady traffic: each worker writes a new key and reads its session.
	const workers = 4
	type stats struct{ writesOK, writes503, readsOK, reads503 atomic.Int64 }
	var st stats
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	clients := make([]*failoverClient, workers)
	for i := range clients {
		clients[i] = newClient()
	}
	probe := newClient() // the test's own session, to watch the gap
	for _, fc := range clients {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				// Count each outcome as soon as its call returns: a put
				// acknowledged just before the kill must not be counted
				// only after the read that follows it, which may wait out
				// the whole failover.
				for i, call := range []func(context.Context) outcome{fc.put, fc.read} {
					o := call(ctx)
					if o.err != nil {
						errs <- o.err
						return
					}
					ok := o.status == http.StatusOK
					switch {
					case i == 0 && ok:
						st.writesOK.Add(1)
					case i == 0:
						st.writes503.Add(1)
					case ok:
						st.readsOK.Add(1)
					default:
						st.reads503.Add(1)
					}
				}
			}
		})
	}
	stopWorkers := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopWorkers)

	// poll waits for cond, failing the test (and reporting a worker's
	// error first) after within.
	poll := func(what string, within time.Duration, cond func() bool) time.Duration {
		t.Helper()
		start := time.Now()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for !cond() {
			select {
			case err := <-errs:
				t.Fatal(err)
			default:
			}
			if time.Since(start) > within {
				t.Fatalf("%s: not within %v (writes %d ok / %d 503, reads %d ok / %d 503)", what, within,
					st.writesOK.Load(), st.writes503.Load(), st.readsOK.Load(), st.reads503.Load())
			}
			<-tick.C
		}
		return time.Since(start)
	}
	poll("steady traffic", 10*time.Second, func() bool { return st.writesOK.Load() >= 100 })
	ackedBefore := st.writesOK.Load()

	// Kill the primary.
	killed := time.Now()
	if locked {
		services(t, "stop", "redis-primary")
	} else {
		lock()
	}

	// The gap: requests either wait (go-redis retries its dials) or fail
	// closed with 503; every 200 shows all acknowledged keys (checked by
	// each read). Sentinel then promotes the replica...
	check := func(o outcome) outcome {
		if o.err != nil {
			t.Fatal(o.err)
		}
		return o
	}
	poll("promotion of the replica", 20*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		hp, err := g.sentinels[0].GetMasterAddrByName(ctx, g.master).Result()
		return err == nil && hp[0]+":"+hp[1] != oldMaster
	})
	promoted := time.Since(killed)
	// ... and reads come back by themselves.
	poll("reads recovered after promotion", 20*time.Second, func() bool {
		return check(probe.read(ctx)).status == http.StatusOK
	})
	readsBack := time.Since(killed)
	// Writes cannot be acknowledged: no replica to WAIT for.
	writes503AtPromotion := st.writes503.Load()
	writesOKAtPromotion := st.writesOK.Load()
	poll("writes refused while the new master has no replica", 10*time.Second, func() bool {
		return st.writes503.Load() >= writes503AtPromotion+2*workers
	})

	// Bring the old primary back; Sentinel makes it a replica of the new
	// master, and writes are acknowledged again.
	writesOKAtRestart := st.writesOK.Load()
	if n := writesOKAtRestart - writesOKAtPromotion; n != 0 {
		t.Errorf("%d writes acknowledged while the new master had no replica to WAIT for", n)
	}
	services(t, "start", "redis-primary")
	restartedAt := time.Now()
	poll("writes recovered after the old primary rejoined", 20*time.Second, func() bool {
		return st.writesOK.Load() >= writesOKAtRestart+2*workers
	})
	writesBack := time.Since(restartedAt)
	stopWorkers()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// Every acknowledged write is there.
	total := 0
	for i, fc := range clients {
		o := fc.read(ctx)
		if o.err != nil || o.status != http.StatusOK {
			t.Fatalf("client %d: final read: %d, %v", i, o.status, o.err)
		}
		total += len(fc.acked)
	}
	t.Logf("killed redis-primary (%s): %d writes acknowledged before the kill, %d in all, none lost; "+
		"%d writes and %d reads answered 503; replica promoted %v and reads back %v after the kill; "+
		"writes back %v after the old primary restarted",
		oldMaster, ackedBefore, total, st.writes503.Load(), st.reads503.Load(), promoted.Round(time.Millisecond),
		readsBack.Round(time.Millisecond), writesBack.Round(time.Millisecond))
}
