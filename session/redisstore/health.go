package redisstore

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// HealthCheck returns a health check function for client, to register with
// a health.Registry as a readiness check (health.Check{Func: ...}): it
// reports whether this instance can reach the Redis its sessions live in.
//
// On a *redis.ClusterClient it pings every master (ForEachMaster), since a
// session lives on the master of its hash slot and one unreachable master
// fails the requests whose sessions hash there; on a *redis.Ring it pings
// every shard. Any other client (standalone, Sentinel failover) is pinged
// once. The error names the node that did not answer.
//
// The check honours ctx, whose deadline the registry sets to the check's
// timeout. Register it for readiness only, never liveness: a Redis outage
// must take instances out of rotation, not restart them all.
func HealthCheck(client redis.UniversalClient) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		switch c := client.(type) {
		case *redis.ClusterClient:
			return c.ForEachMaster(ctx, pingNode)
		case *redis.Ring:
			return c.ForEachShard(ctx, pingNode)
		}
		if err := client.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("redis: ping: %w", err)
		}
		return nil
	}
}

func pingNode(ctx context.Context, n *redis.Client) error {
	if err := n.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis %s: ping: %w", n.Options().Addr, err)
	}
	return nil
}
