package redisstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/redisstore"
	"github.com/activekit/activekit/session/sessiontest"
)

// TestWaitRefusedOnRing: WAIT counts the replicas that acknowledged the
// writes of its own connection, and a *redis.Ring sends a keyless command
// (WAIT) to a random shard, on another connection than the write's, in a
// pipeline of its own run concurrently: a write could be reported
// acknowledged by a replica it never reached, and lost at the next
// failover. New refuses WithWait with any client but a *redis.Client
// (standalone or Sentinel), as it refused it with a *redis.ClusterClient.
//
// Shown with a Ring over the standalone server (no replica: WAIT 1 must
// time out for every write there) and the Sentinel group's master (one
// replica).
func TestWaitRefusedOnRing(t *testing.T) {
	standalone := testenv.RedisAddr(t)
	sentinels, name := testenv.RedisSentinel(t)
	sc := redis.NewSentinelClient(&redis.Options{Addr: sentinels[0]})
	t.Cleanup(func() { _ = sc.Close() })
	hp, err := sc.GetMasterAddrByName(t.Context(), name).Result()
	if err != nil {
		t.Fatal(err)
	}
	master := hp[0] + ":" + hp[1]
	plain := redis.NewClient(&redis.Options{Addr: standalone})
	t.Cleanup(func() { _ = plain.Close() })
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, plain, prefix)
	// Either naming of the shards: the Ring sends WAIT to the shard its
	// own name hashes to.
	for _, shards := range []map[string]string{{"a": standalone, "b": master}, {"a": master, "b": standalone}} {
		ring := redis.NewRing(&redis.RingOptions{Addrs: shards})
		t.Cleanup(func() { _ = ring.Close() })
		s, err := redisstore.New(ring, redisstore.WithPrefix(prefix), redisstore.WithWait(1, 100*time.Millisecond))
		if err != nil {
			continue
		}
		// What the Ring does with it: a write that landed on the server
		// without replicas, reported as acknowledged by one.
		for range 10 {
			id := sessiontest.NewID(t, "")
			_, aerr := s.Apply(context.Background(), id, session.Delta{Create: &session.Create{Absolute: time.Minute}, Idle: time.Minute})
			there, _ := plain.Keys(t.Context(), prefix+"*").Result()
			_ = s.Delete(context.Background(), id)
			if aerr == nil && len(there) > 0 {
				t.Fatalf("New accepted WithWait on a *redis.Ring: a write to a server without replicas was reported acknowledged by one")
			}
		}
		t.Errorf("New accepted WithWait on a *redis.Ring")
	}
}
