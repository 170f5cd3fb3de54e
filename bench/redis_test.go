package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// poolSize is the connection pool of every contestant's Redis client, so that
// no contestant waits for a connection another would have had.
const poolSize = 64

// redisAddr returns ACTIVEKIT_REDIS_ADDR after checking that the server
// answers. When it is unset the test skips, or fails under
// ACTIVEKIT_REQUIRE_INTEGRATION=1. (internal/testenv, which the root module's
// tests use, cannot be imported from this module.)
func redisAddr(tb testing.TB) string {
	tb.Helper()
	addr := os.Getenv("ACTIVEKIT_REDIS_ADDR")
	if addr == "" {
		if os.Getenv("ACTIVEKIT_REQUIRE_INTEGRATION") == "1" {
			tb.Fatal("ACTIVEKIT_REDIS_ADDR is not set and ACTIVEKIT_REQUIRE_INTEGRATION=1")
		}
		tb.Skip("ACTIVEKIT_REDIS_ADDR is not set (eval \"$(../scripts/services env)\")")
	}
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		tb.Fatalf("Redis at %s (ACTIVEKIT_REDIS_ADDR) does not answer: %v", addr, err)
	}
	return addr
}

// newRedis returns a go-redis client of addr, closed at the end of tb.
func newRedis(tb testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, PoolSize: poolSize})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// uniquePrefix returns a key prefix no other run uses, and removes its keys
// at the end of tb.
func uniquePrefix(tb testing.TB, addr, name string) string {
	tb.Helper()
	prefix := "bench:" + rand.Text()[:10] + ":" + name + ":"
	tb.Cleanup(func() {
		c := redis.NewClient(&redis.Options{Addr: addr})
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
			if len(keys) == 1000 {
				c.Unlink(ctx, keys...)
				keys = keys[:0]
			}
		}
		if len(keys) > 0 {
			c.Unlink(ctx, keys...)
		}
		if err := iter.Err(); err != nil {
			tb.Errorf("cleanup of %s*: %v", prefix, err)
		}
	})
	return prefix
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
