package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/activekit/activekit/health"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// logSink is the stdout of an in-process instance: it keeps the JSON log
// lines and reports the address the instance listens on.
type logSink struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines []map[string]any
	addr  chan string // receives the "listening" address once
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	for {
		line, err := s.buf.ReadBytes('\n')
		if err != nil { // an incomplete line: keep it for the next write
			s.buf.Write(line)
			return len(p), nil
		}
		var m map[string]any
		if json.Unmarshal(line, &m) != nil {
			m = map[string]any{"raw": string(line)}
		}
		s.lines = append(s.lines, m)
		if m["msg"] == "listening" {
			if a, ok := m["addr"].(string); ok {
				select {
				case s.addr <- a:
				default:
				}
			}
		}
	}
}

// has reports whether a log line has msg and every attribute given.
func (s *logSink) has(msg string, attrs map[string]any) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.lines {
		if l["msg"] != msg {
			continue
		}
		ok := true
		for k, v := range attrs {
			if l[k] != v {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// errors returns the log lines at level ERROR.
func (s *logSink) errors() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range s.lines {
		if l["level"] == "ERROR" {
			out = append(out, l)
		}
	}
	return out
}

// instance is one copy of the service run in-process by run.
type instance struct {
	base   string // http://host:port
	log    *logSink
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// startInstance runs the service with env as its whole environment and
// args as its flags, and returns once it listens. It is stopped at the end
// of the test if the test did not stop it.
func startInstance(t *testing.T, env map[string]string, args ...string) *instance {
	t.Helper()
	sink := &logSink{addr: make(chan string, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{log: sink, cancel: cancel, done: make(chan error, 1)}
	getenv := func(k string) string { return env[k] }
	go func() { in.done <- run(ctx, args, getenv, sink) }()
	t.Cleanup(func() {
		if err := in.stop(); err != nil {
			t.Errorf("instance %s stopped with %v", in.base, err)
		}
		if t.Failed() {
			for _, l := range sink.errors() {
				t.Logf("%s logged: %v", in.base, l)
			}
		}
	})
	select {
	case addr := <-sink.addr:
		in.base = "http://" + addr
	case err := <-in.done:
		in.done <- err
		t.Fatalf("run returned before listening: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("instance did not listen within 15s")
	}
	return in
}

// stop cancels the instance's context (its SIGTERM) and returns what run
// returned.
func (in *instance) stop() error {
	in.once.Do(func() {
		in.cancel()
		in.err = <-in.done
	})
	return in.err
}

// newClient returns a client with its own cookie jar, as one browser. The
// jar sends a 127.0.0.1 cookie to every port, so one session spans every
// instance.
func newClient(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Jar: jar, Transport: tr, Timeout: 10 * time.Second}
}

// get returns the status and body of GET url.
func get(t *testing.T, c *http.Client, url string) (int, []byte) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return resp.StatusCode, body
}

// health returns the status code and decoded body of a health view.
func healthOf(t *testing.T, c *http.Client, url string) (int, health.Response) {
	t.Helper()
	code, body := get(t, c, url)
	var r health.Response
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("GET %s: %d %q: %v", url, code, body, err)
	}
	return code, r
}

// eventually polls cond every 10ms until it is true, or fails after d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(d)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("%s: not within %v", what, d)
		}
	}
}

// waitReady waits until the instance's /readyz answers 200.
func waitReady(t *testing.T, c *http.Client, base string) {
	t.Helper()
	eventually(t, 10*time.Second, base+" ready", func() bool {
		code, _ := get(t, c, base+"/readyz")
		return code == http.StatusOK
	})
}

func visit(t *testing.T, c *http.Client, base string) Visits {
	t.Helper()
	code, body := get(t, c, base+"/visits")
	if code != http.StatusOK {
		t.Fatalf("GET %s/visits: %d %s", base, code, body)
	}
	var v Visits
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("GET %s/visits: %q: %v", base, body, err)
	}
	return v
}

func fmtChecks(r health.Response) string {
	var b bytes.Buffer
	for name, cs := range r.Checks {
		fmt.Fprintf(&b, " %s=%s", name, cs[0].Status)
		if cs[0].Output != "" {
			fmt.Fprintf(&b, "(%s)", cs[0].Output)
		}
	}
	return b.String()
}
