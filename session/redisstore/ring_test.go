package redisstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session/redisstore"
	"github.com/activekit/activekit/session/sessiontest"
)

// TestRingRefused: a *redis.Ring takes a shard it finds down out of its
// hash ring, and sends that shard's keys to the others: a Load of a session
// on the failed shard then answers not found instead of failing, and the
// Manager issues a fresh session (or clears the cookie) instead of failing
// closed, a logout deletes nothing, and the session is back, still open to
// its token, when the shard returns. New refuses a Ring.
func TestRingRefused(t *testing.T) {
	ring := redis.NewRing(&redis.RingOptions{
		Addrs:              map[string]string{"up": testenv.RedisAddr(t), "down": testenv.FreeAddr(t)},
		HeartbeatFrequency: 50 * time.Millisecond,
		DialTimeout:        100 * time.Millisecond,
		MaxRetries:         -1,
	})
	t.Cleanup(func() { _ = ring.Close() })
	s, err := redisstore.New(ring, redisstore.WithPrefix(testenv.Name(t)+":"))
	if err != nil {
		return
	}
	// What the Ring does with it: a session ID whose key the Ring sends to
	// the shard that is down fails at first (as it should), then, once the
	// heartbeat has taken the shard out, reads as not found.
	ctx := context.Background()
	id := ""
	for range 100 {
		cand := sessiontest.NewID(t, "")
		if _, _, err := s.Load(ctx, cand, time.Minute); err != nil {
			id = cand
			break
		}
	}
	if id == "" {
		t.Fatal("New accepted a *redis.Ring (no ID reached the shard that is down)")
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, found, err := s.Load(ctx, id, time.Minute); err == nil && !found {
			t.Fatal("New accepted a *redis.Ring: a session on a shard that is down reads as not found, not as a failure")
		}
		time.Sleep(50 * time.Millisecond) // the Ring's heartbeat, which nothing signals
	}
	t.Fatal("New accepted a *redis.Ring")
}
