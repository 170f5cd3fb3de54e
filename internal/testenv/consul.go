package testenv

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/testcontainers/testcontainers-go/wait"
)

var consulContainer = containerSpec{
	key:   "consul",
	image: "hashicorp/consul:1.14",
	ports: []string{"8500/tcp"},
	cmd:   func(map[string]string) []string { return []string{"agent", "-dev", "-client", "0.0.0.0"} },
	wait:  wait.ForHTTP("/v1/status/leader").WithPort("8500/tcp"),
}

// ConsulAddr returns the HTTP address of a Consul agent:
// ACTIVEKIT_CONSUL_ADDR, else a container running a dev agent. It checks that
// the agent has a leader.
func ConsulAddr(t testing.TB) string {
	t.Helper()
	return env(os.Getenv).consulAddr(t)
}

func (e env) consulAddr(t testing.TB) string {
	t.Helper()
	addr, ok := e.lookupAddr(t, EnvConsulAddr)
	if ok {
		useService(t, "consul")
	}
	if !ok {
		host, ports, up, why := container(t, consulContainer)
		if !up {
			e.unavailable(t, EnvConsulAddr, "not set, and no container: %s", why)
			return ""
		}
		addr = net.JoinHostPort(host, ports["8500/tcp"])
	}
	if err := consulLeader(addr); err != nil {
		e.unavailable(t, EnvConsulAddr, "Consul at %q does not answer: %v", addr, err)
	}
	return addr
}

func consulLeader(addr string) error {
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = addr
	c, err := api.NewClient(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	deadline := time.Now().Add(3 * time.Second)
	for {
		leader, err := c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
		if err == nil && leader != "" {
			return nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errUnexpected("no leader")
			}
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Consul returns a client of the agent from ConsulAddr, whose idle
// connections are closed at the end of the test. Tests isolate themselves by
// using Name(t) as a KV prefix or service name; CleanupConsulKV removes a
// prefix at the end of the test.
func Consul(t testing.TB) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = ConsulAddr(t)
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatalf("testenv: consul client: %v", err)
	}
	t.Cleanup(cfg.Transport.CloseIdleConnections)
	return c
}

// CleanupConsulKV deletes every key under prefix at the end of the test.
func CleanupConsulKV(t testing.TB, c *api.Client, prefix string) {
	t.Helper()
	t.Cleanup(func() {
		if _, err := c.KV().DeleteTree(prefix, nil); err != nil {
			t.Logf("testenv: removing Consul keys %s: %v", prefix, err)
		}
	})
}
