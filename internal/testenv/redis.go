package testenv

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go/wait"
)

var redisContainer = containerSpec{
	key:   "redis",
	image: "redis:7.2",
	ports: []string{"6379/tcp"},
	wait:  wait.ForLog("Ready to accept connections"),
}

// RedisAddr returns the address of a standalone Redis: ACTIVEKIT_REDIS_ADDR,
// else a container. It checks that the server answers PING.
func RedisAddr(t testing.TB) string {
	t.Helper()
	return env(os.Getenv).redisAddr(t)
}

func (e env) redisAddr(t testing.TB) string {
	t.Helper()
	addr, ok := e.lookupAddr(t, EnvRedisAddr)
	if !ok {
		host, ports, up, why := container(t, redisContainer)
		if !up {
			e.unavailable(t, EnvRedisAddr, "not set, and no container: %s", why)
			return ""
		}
		addr = net.JoinHostPort(host, ports["6379/tcp"])
	}
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	if err := pingRedis(c); err != nil {
		e.unavailable(t, EnvRedisAddr, "Redis at %q does not answer: %v", addr, err)
	}
	return addr
}

// Redis returns a client of the standalone Redis from RedisAddr, closed at the
// end of the test. Use Name(t) as a key prefix; CleanupRedisPrefix removes the
// keys.
func Redis(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: RedisAddr(t)})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// RedisSentinel returns the Sentinel addresses and the master name from
// ACTIVEKIT_REDIS_SENTINELS and ACTIVEKIT_REDIS_MASTER, after asking a
// Sentinel for the master. There is no container fallback: a Sentinel group
// needs several processes (scripts/services starts one).
func RedisSentinel(t testing.TB) (sentinels []string, master string) {
	t.Helper()
	return env(os.Getenv).redisSentinel(t)
}

func (e env) redisSentinel(t testing.TB) ([]string, string) {
	t.Helper()
	sentinels, ok := e.lookupAddrList(t, EnvRedisSentinels)
	if !ok {
		e.unavailable(t, EnvRedisSentinels, "not set (and %s names the master); no container fallback for Sentinel", EnvRedisMaster)
		return nil, ""
	}
	useService(t, "redis-primary")
	master := e(EnvRedisMaster)
	if master == "" {
		t.Fatalf("testenv: %s is set but %s, the master's name, is empty", EnvRedisSentinels, EnvRedisMaster)
	}
	var lastErr error
	for _, s := range sentinels {
		sc := redis.NewSentinelClient(&redis.Options{Addr: s, MaxRetries: -1})
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err := sc.GetMasterAddrByName(ctx, master).Result()
		cancel()
		_ = sc.Close()
		if err == nil {
			return sentinels, master
		}
		lastErr = err
	}
	e.unavailable(t, EnvRedisSentinels, "no Sentinel of %v knows master %q: %v", sentinels, master, lastErr)
	return nil, ""
}

// RedisFailover returns a Sentinel-backed client of the master named by
// ACTIVEKIT_REDIS_MASTER, closed at the end of the test.
func RedisFailover(t testing.TB) *redis.Client {
	t.Helper()
	sentinels, master := RedisSentinel(t)
	c := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: master, SentinelAddrs: sentinels})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// RedisClusterAddrs returns the seed addresses of a Redis Cluster from
// ACTIVEKIT_REDIS_CLUSTER, after checking that the cluster state is ok.
func RedisClusterAddrs(t testing.TB) []string {
	t.Helper()
	return env(os.Getenv).redisCluster(t)
}

func (e env) redisCluster(t testing.TB) []string {
	t.Helper()
	addrs, ok := e.lookupAddrList(t, EnvRedisCluster)
	if !ok {
		e.unavailable(t, EnvRedisCluster, "not set; no container fallback for a Redis Cluster")
		return nil
	}
	c := redis.NewClient(&redis.Options{Addr: addrs[0], MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	info, err := c.ClusterInfo(ctx).Result()
	if err != nil {
		e.unavailable(t, EnvRedisCluster, "Redis Cluster at %q does not answer: %v", addrs[0], err)
		return nil
	}
	if !strings.Contains(info, "cluster_state:ok") {
		e.unavailable(t, EnvRedisCluster, "Redis Cluster at %q is not ok: %s", addrs[0], info)
		return nil
	}
	return addrs
}

// RedisCluster returns a cluster client over RedisClusterAddrs, closed at the
// end of the test.
func RedisCluster(t testing.TB) *redis.ClusterClient {
	t.Helper()
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: RedisClusterAddrs(t)})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// CleanupRedisPrefix deletes, at the end of the test, every key that starts
// with prefix, on every master of c (a *redis.Client or *redis.ClusterClient).
func CleanupRedisPrefix(t testing.TB, c redis.UniversalClient, prefix string) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		del := func(ctx context.Context, n redis.UniversalClient) error {
			iter := n.Scan(ctx, 0, prefix+"*", 500).Iterator()
			for iter.Next(ctx) {
				n.Del(ctx, iter.Val())
			}
			return iter.Err()
		}
		var err error
		if cc, ok := c.(*redis.ClusterClient); ok {
			err = cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error { return del(ctx, n) })
		} else {
			err = del(ctx, c)
		}
		if err != nil {
			t.Logf("testenv: removing keys %s*: %v", prefix, err)
		}
	})
}

func pingRedis(c *redis.Client) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return c.Ping(ctx).Err()
}
