package redisstore_test

import (
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/redisstore"
	"github.com/activekit/activekit/session/sessiontest"
)

// TestWaitLongerThanReadTimeout: WAIT is pipelined with the write and its
// reply read under the client's ReadTimeout, so a WithWait timeout at least
// as long made every write that replicas did not acknowledge in time fail
// with an i/o timeout (go-redis sets it on the write's command too; the
// connection is closed), its outcome unknown, where ErrNotReplicated was
// promised: a write applied on the primary reported as failed. New refuses
// such a pair; a WAIT shorter than the read timeout reports ErrNotReplicated.
func TestWaitLongerThanReadTimeout(t *testing.T) {
	addr := testenv.RedisAddr(t)
	c := redis.NewClient(&redis.Options{Addr: addr, ReadTimeout: 300 * time.Millisecond})
	t.Cleanup(func() { _ = c.Close() })
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, c, prefix)
	create := session.Delta{Create: &session.Create{Absolute: time.Hour}, Idle: time.Hour}

	// The standalone server has no replica: WAIT 1 waits its whole timeout.
	if s, err := redisstore.New(c, redisstore.WithPrefix(prefix), redisstore.WithWait(1, 600*time.Millisecond)); err == nil {
		_, aerr := s.Apply(t.Context(), sessiontest.NewID(t, ""), create)
		t.Fatalf("New accepted WAIT 600ms on a client with a 300ms read timeout; an Apply then: %v", aerr)
	}
	s, err := redisstore.New(c, redisstore.WithPrefix(prefix), redisstore.WithWait(1, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(t.Context(), sessiontest.NewID(t, ""), create); !errors.Is(err, redisstore.ErrNotReplicated) {
		t.Fatalf("WAIT 100ms: %v, want ErrNotReplicated", err)
	}
	// No read deadline at all (ReadTimeout -1): any WAIT timeout.
	nc := redis.NewClient(&redis.Options{Addr: addr, ReadTimeout: -1})
	t.Cleanup(func() { _ = nc.Close() })
	if _, err := redisstore.New(nc, redisstore.WithPrefix(prefix), redisstore.WithWait(1, time.Minute)); err != nil {
		t.Errorf("a client without a read timeout: %v", err)
	}
}
