package consul_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/hashicorp/consul/api"
)

// privateAgent is a Consul dev agent of the test's own, on loopback ports
// nothing else uses, which the test may stop and start: the shared agent
// that other tests (and other engineers' packages) use is never touched.
type privateAgent struct {
	t    *testing.T
	bin  string
	args []string
	addr string // HTTP address
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
}

// consulBinary finds the consul binary as scripts/services does: on PATH,
// else in its cache directory.
func consulBinary() (string, bool) {
	if p, err := exec.LookPath("consul"); err == nil {
		return p, true
	}
	dir := os.Getenv("ACTIVEKIT_CACHE_DIR")
	if dir == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", false
			}
			base = filepath.Join(home, ".cache")
		}
		dir = filepath.Join(base, "activekit")
	}
	p := filepath.Join(dir, "bin", "consul")
	if _, err := os.Stat(p); err != nil {
		return "", false
	}
	return p, true
}

// startPrivateAgent starts a dev agent and waits until it has a leader. It
// is stopped at cleanup.
func startPrivateAgent(t *testing.T) *privateAgent {
	t.Helper()
	bin, ok := consulBinary()
	if !ok {
		testenv.Unavailable(t, testenv.EnvConsulAddr, "no consul binary on PATH or in the activekit cache: this test runs an agent of its own")
		return nil
	}
	port := func() string {
		_, p, _ := net.SplitHostPort(testenv.FreeAddr(t))
		return p
	}
	a := &privateAgent{t: t, bin: bin}
	http := port()
	a.addr = "127.0.0.1:" + http
	a.args = []string{"agent", "-dev", "-node=" + strings.ReplaceAll(testenv.Name(t), "/", "-"),
		"-bind=127.0.0.1", "-client=127.0.0.1", "-http-port=" + http,
		"-dns-port=-1", "-grpc-port=-1", "-grpc-tls-port=-1",
		"-serf-lan-port=" + port(), "-serf-wan-port=" + port(), "-server-port=" + port(),
		"-log-level=err"}
	t.Cleanup(a.stop)
	a.start()
	return a
}

// client returns a client of the agent.
func (a *privateAgent) client() *api.Client {
	a.t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = a.addr
	c, err := api.NewClient(cfg)
	if err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(cfg.Transport.CloseIdleConnections)
	return c
}

// start starts the agent (again, with none of its former state, as a
// restarted dev agent) and waits up to 30s for it to elect itself leader.
func (a *privateAgent) start() {
	a.t.Helper()
	a.cmd = exec.Command(a.bin, a.args...)
	if err := a.cmd.Start(); err != nil {
		a.t.Fatalf("starting a private consul agent: %v", err)
	}
	a.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		_ = cmd.Wait()
		close(done)
	}(a.cmd, a.done)
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = a.addr
	c, err := api.NewClient(cfg)
	if err != nil {
		a.t.Fatal(err)
	}
	defer cfg.Transport.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		leader, err := c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
		cancel()
		if err == nil && leader != "" {
			return
		}
		select {
		case <-a.done:
			a.t.Fatalf("the private consul agent exited at start (%s)", strings.Join(a.args, " "))
		default:
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("the private consul agent has no leader 30s after its start: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // polling the agent; nothing signals
	}
}

// stop kills the agent, as a crash does, and waits for it to exit.
func (a *privateAgent) stop() {
	if a.cmd == nil {
		return
	}
	_ = a.cmd.Process.Kill()
	<-a.done
	a.cmd = nil
}
