package consul

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/consul/api"
)

// ErrNoLeader is returned by the HealthCheck function when the agent answers
// but its cluster has no leader: registrations, heartbeats and KV reads that
// need consistency will fail until one is elected.
var ErrNoLeader = errors.New("consul: cluster has no leader")

// HealthCheck returns a health check function for client, to register with
// a health.Registry: it asks the agent for the cluster leader
// (/v1/status/leader), which proves the agent answers and that its cluster
// can serve writes. It returns an error when the agent does not answer
// within ctx, and ErrNoLeader when the answer is empty.
//
// Think before letting it gate readiness. Every instance shares the same
// Consul cluster, so a Consul outage would fail readiness on the whole fleet
// at once and empty the load balancer, while instances that already know
// their peers and configuration could go on serving. Report it as a warning
// instead (health.Warn) unless the instance truly cannot serve without
// Consul; never register it for liveness.
func HealthCheck(client *api.Client) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		q := (&api.QueryOptions{}).WithContext(ctx)
		leader, err := client.Status().LeaderWithQueryOptions(q)
		if err != nil {
			return fmt.Errorf("consul: status/leader: %w", err)
		}
		if leader == "" {
			return ErrNoLeader
		}
		return nil
	}
}
