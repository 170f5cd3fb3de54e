package redisstore_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/health"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session/redisstore"
)

func checkCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestHealthCheckUp(t *testing.T) {
	for _, tc := range []struct {
		name   string
		client func(t *testing.T) redis.UniversalClient
	}{
		{"standalone", func(t *testing.T) redis.UniversalClient { return testenv.Redis(t) }},
		{"sentinel", func(t *testing.T) redis.UniversalClient { return testenv.RedisFailover(t) }},
		{"cluster", func(t *testing.T) redis.UniversalClient { return testenv.RedisCluster(t) }},
		{"universal", func(t *testing.T) redis.UniversalClient {
			c := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{testenv.RedisAddr(t)}})
			t.Cleanup(func() { _ = c.Close() })
			return c
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := redisstore.HealthCheck(tc.client(t))(checkCtx(t)); err != nil {
				t.Fatalf("check of a live server: %v", err)
			}
		})
	}
}

func TestHealthCheckDown(t *testing.T) {
	live := testenv.RedisAddr(t)
	dead := testenv.FreeAddr(t)
	for _, tc := range []struct {
		name   string
		client func() redis.UniversalClient
	}{
		{"standalone", func() redis.UniversalClient {
			return redis.NewClient(&redis.Options{Addr: dead, MaxRetries: -1})
		}},
		// A cluster whose second master is gone: pinging one node is not
		// enough, every master must answer.
		{"cluster one master down", func() redis.UniversalClient {
			return redis.NewClusterClient(&redis.ClusterOptions{
				MaxRetries: -1,
				ClusterSlots: func(context.Context) ([]redis.ClusterSlot, error) {
					return []redis.ClusterSlot{
						{Start: 0, End: 8191, Nodes: []redis.ClusterNode{{Addr: live}}},
						{Start: 8192, End: 16383, Nodes: []redis.ClusterNode{{Addr: dead}}},
					}, nil
				},
			})
		}},
		{"ring one shard down", func() redis.UniversalClient {
			return redis.NewRing(&redis.RingOptions{
				MaxRetries: -1,
				Addrs:      map[string]string{"a": live, "b": dead},
			})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.client()
			t.Cleanup(func() { _ = c.Close() })
			err := redisstore.HealthCheck(c)(checkCtx(t))
			if err == nil {
				t.Fatalf("check of %s: no error", dead)
			}
			// The cluster client drops a loopback host that came without
			// seed addresses, so match the port.
			_, port, _ := net.SplitHostPort(dead)
			if !strings.Contains(err.Error(), ":"+port+":") {
				t.Errorf("error %q does not name the dead node %s", err, dead)
			}
		})
	}
}

// The check gates readiness through a health.Registry: 200 while Redis
// answers, 503 when it does not.
func TestHealthCheckReadiness(t *testing.T) {
	reg, err := health.NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	live := testenv.Redis(t)
	dead := redis.NewClient(&redis.Options{Addr: testenv.FreeAddr(t), MaxRetries: -1})
	t.Cleanup(func() { _ = dead.Close() })
	for name, c := range map[string]*redis.Client{"redis:live": live, "redis:dead": dead} {
		if err := reg.Register(health.Check{Name: name, Func: redisstore.HealthCheck(c), Interval: -1}); err != nil {
			t.Fatal(err)
		}
	}
	reg.MarkStarted()
	rec := httptest.NewRecorder()
	reg.Handler(health.Readiness).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("readiness with a dead Redis: %d, want 503: %s", rec.Code, rec.Body)
	}
	body := rec.Body.String()
	if !strings.Contains(body, `"redis:live":[{"status":"pass"`) || !strings.Contains(body, `"redis:dead":[{"status":"fail"`) {
		t.Errorf("readiness body does not show one pass and one fail: %s", body)
	}
}

// A readiness check of the Redis that holds the sessions. It needs a Redis
// server, so it is compiled but not run.
func ExampleHealthCheck() {
	client := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{"127.0.0.1:6379"}})
	defer client.Close()
	reg, err := health.NewRegistry()
	if err != nil {
		panic(err)
	}
	err = reg.Register(health.Check{
		Name:          "redis:ping",
		ComponentType: "datastore",
		Func:          redisstore.HealthCheck(client),
		Timeout:       500 * time.Millisecond,
	})
	if err != nil {
		panic(err)
	}
}
