package consul_test

import (
	"slices"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/consul"
	"github.com/activekit/activekit/internal/testenv"
)

// TestAgentRestart restarts the shared dev agent, which loses every
// registration: the heartbeat must register the instance again within one
// TTL of the agent answering, and a watch running across the restart must
// keep its last known list (with the error) while the agent is down and
// then see the instance again. It stops a shared server, so it does not run
// with -short.
func TestAgentRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts the shared Consul agent")
	}
	c := testenv.Consul(t)
	service := testenv.Name(t)
	const ttl = 3 * time.Second
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: ttl})
	w := watch(t, newResolver(t, c, consul.ResolverConfig{}), service)
	id := service + "-1"
	register(t, reg, instance(service, id, 9001))
	w.waitUntil(t, 5*time.Second, "registered", has(id))

	stopped := false
	t.Cleanup(func() {
		if stopped {
			testenv.StartService(t, "consul")
		}
	})
	testenv.StopService(t, "consul")
	stopped = true
	// While the agent is down the watch reports the error with its last
	// known list.
	u := w.waitUntil(t, 10*time.Second, "error update", func(u discovery.Update) bool { return u.Err != nil })
	if !slices.Contains(ids(u), id) || u.Fetched.IsZero() {
		t.Fatalf("update while the agent is down: %+v, want the last known list and its fetch time", u)
	}
	testenv.StartService(t, "consul")
	stopped = false
	back := time.Now()
	u = w.waitUntil(t, 2*ttl, "re-registered instance", has(id))
	took := time.Since(back)
	t.Logf("instance passing again %v after the agent answered (TTL %v, heartbeat every %v)", took.Round(time.Millisecond), ttl, ttl/3)
	if took > ttl {
		t.Fatalf("re-registered after %v, want within one TTL (%v)", took, ttl)
	}
	if u.Err != nil {
		t.Fatalf("update after recovery carries error %v", u.Err)
	}
}
