package consul_test

import (
	"slices"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/consul"
	"github.com/activekit/activekit/internal/testenv"
)

// TestAgentRestart restarts the agent, which loses every registration: the
// heartbeat must register the instance again within one TTL of the agent
// answering, and a watch running across the restart must keep its last
// known list (with the error) while the agent is down and then see the
// instance again. The agent is one of the test's own, never the shared one.
func TestAgentRestart(t *testing.T) {
	agent := startPrivateAgent(t)
	c := agent.client()
	service := testenv.Name(t)
	const ttl = 3 * time.Second
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: ttl})
	w := watch(t, newResolver(t, c, consul.ResolverConfig{}), service)
	id := service + "-1"
	register(t, reg, instance(service, id, 9001))
	w.waitUntil(t, 5*time.Second, "registered", has(id))

	agent.stop()
	// While the agent is down the watch reports the error with its last
	// known list.
	u := w.waitUntil(t, 10*time.Second, "error update", func(u discovery.Update) bool { return u.Err != nil })
	if !slices.Contains(ids(u), id) || u.Fetched.IsZero() {
		t.Fatalf("update while the agent is down: %+v, want the last known list and its fetch time", u)
	}
	agent.start()
	back := time.Now()
	// Re-registration, measured at the agent: the heartbeat must put the
	// instance back, passing, within one TTL.
	for {
		entries, _, err := c.Health().Service(service, "", true, nil)
		if err == nil && len(entries) == 1 && entries[0].Service.ID == id {
			break
		}
		if time.Since(back) > 2*ttl {
			t.Fatalf("instance not passing at the agent %v after it answered: %v, %v", 2*ttl, entries, err)
		}
		time.Sleep(20 * time.Millisecond) // polling the agent; nothing signals
	}
	took := time.Since(back)
	t.Logf("instance passing again %v after the agent answered (TTL %v, heartbeat every %v)", took.Round(time.Millisecond), ttl, ttl/3)
	if took > ttl {
		t.Fatalf("re-registered after %v, want within one TTL (%v)", took, ttl)
	}
	// The watch recovers by itself: its back-off after errors is capped
	// (10 s by default), so it sees the instance again within that.
	u = w.waitUntil(t, 15*time.Second, "re-registered instance", has(id))
	t.Logf("the watch saw it %v after the agent answered", time.Since(back).Round(time.Millisecond))
	if u.Err != nil {
		t.Fatalf("update after recovery carries error %v", u.Err)
	}
}
