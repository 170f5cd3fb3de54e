package consulsource

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/hashicorp/consul/api"
)

// agent is a Consul dev agent of one test's own, on loopback ports of its
// own, so that the test can stop it and start it again (a dev agent forgets
// everything, so it comes back with low indexes and no keys) without
// touching the shared agent other tests and packages use.
type agent struct {
	t     *testing.T
	bin   string
	ports [4]int // http, serf lan, serf wan, server
	cmd   *exec.Cmd
	done  chan struct{}
	// Client talks to the agent's HTTP port, whether or not it is running.
	Client *api.Client
}

// consulBinary finds the consul binary as scripts/services does: on PATH,
// else in its build cache.
func consulBinary() (string, bool) {
	if p, err := exec.LookPath("consul"); err == nil {
		return p, true
	}
	dir := os.Getenv("ACTIVEKIT_CACHE_DIR")
	if dir == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, _ := os.UserHomeDir()
			base = filepath.Join(home, ".cache")
		}
		dir = filepath.Join(base, "activekit")
	}
	p := filepath.Join(dir, "bin", "consul")
	if _, err := os.Stat(p); err == nil {
		return p, true
	}
	return "", false
}

// startAgent starts a private dev agent and stops it at cleanup.
func startAgent(t *testing.T) *agent {
	t.Helper()
	a := newAgent(t)
	a.Start()
	return a
}

// newAgent picks the ports of a private agent, without starting it.
func newAgent(t *testing.T) *agent {
	t.Helper()
	bin, ok := consulBinary()
	if !ok {
		testenv.Unavailable(t, testenv.EnvConsulAddr, "no consul binary on PATH or in the scripts/services cache, for a private agent this test stops")
		return nil
	}
	a := &agent{t: t, bin: bin}
	for i := range a.ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		a.ports[i] = l.Addr().(*net.TCPAddr).Port
		defer l.Close() // all held until the loop ends, so that the ports differ
	}
	cfg := api.DefaultConfig()
	cfg.Address = "127.0.0.1:" + strconv.Itoa(a.ports[0])
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.Client = c
	t.Cleanup(cfg.Transport.CloseIdleConnections)
	t.Cleanup(a.Stop)
	return a
}

// Start starts the agent (again) and waits until it has a leader.
func (a *agent) Start() {
	a.t.Helper()
	if a.cmd != nil {
		a.t.Fatal("agent already running")
	}
	p := a.ports
	done := make(chan struct{})
	a.cmd = exec.Command(a.bin, "agent", "-dev", "-node=activekit-private-"+strconv.Itoa(p[0]),
		"-bind=127.0.0.1", "-client=127.0.0.1", "-log-level=error",
		"-http-port="+strconv.Itoa(p[0]), "-serf-lan-port="+strconv.Itoa(p[1]),
		"-serf-wan-port="+strconv.Itoa(p[2]), "-server-port="+strconv.Itoa(p[3]),
		"-dns-port=-1", "-grpc-port=-1", "-grpc-tls-port=-1")
	out := &strings.Builder{}
	a.cmd.Stdout, a.cmd.Stderr = out, out // written by exec's copying goroutines until Wait returns
	if err := a.cmd.Start(); err != nil {
		a.t.Fatalf("starting %s: %v", a.bin, err)
	}
	a.t.Cleanup(func() {
		if a.t.Failed() {
			a.Stop() // if this run is still the current one
			<-done
			a.t.Logf("%s said:\n%s", a.bin, out)
		}
	})
	a.done = done
	go func(cmd *exec.Cmd) { _ = cmd.Wait(); close(done) }(a.cmd)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if leader, err := a.Client.Status().Leader(); err == nil && leader != "" {
			return
		}
		select {
		case <-a.done:
			a.t.Fatal("private consul agent exited at start")
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			a.t.Fatal("private consul agent has no leader after 30s")
		}
	}
}

// Stop kills the agent, as a crash would, and waits for it to exit.
func (a *agent) Stop() {
	if a.cmd == nil {
		return
	}
	_ = a.cmd.Process.Kill()
	<-a.done
	a.cmd = nil
}

func (a *agent) put(key, value string) {
	a.t.Helper()
	if _, err := a.Client.KV().Put(&api.KVPair{Key: key, Value: []byte(value)}, nil); err != nil {
		a.t.Fatalf("put %s: %v", key, err)
	}
}

// blockingQueries returns the agent's consul.rpc.queries_blocking gauge:
// how many blocking queries its server holds now.
func (a *agent) blockingQueries() int {
	a.t.Helper()
	m, err := a.Client.Agent().Metrics()
	if err != nil {
		a.t.Fatalf("agent metrics: %v", err)
	}
	for _, g := range m.Gauges {
		if g.Name == "consul.rpc.queries_blocking" {
			return int(g.Value)
		}
	}
	return 0
}
