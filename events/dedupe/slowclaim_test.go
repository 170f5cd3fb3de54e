package dedupe_test

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/internal/testenv"
)

// slowConn delays the next reply read while delay is set, as a slow network
// or a server stalled after running the command would.
type slowConn struct {
	net.Conn
	delay *atomic.Int64 // ns
}

func (c *slowConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if d := c.delay.Swap(0); n > 0 && d > 0 {
		time.Sleep(time.Duration(d)) // the reply is late
	}
	return n, err
}

// TestMiddlewareSlowClaimReply: the handler's ctx ends a tenth of the lease
// before the claim's lease does, counted from before the claim was sent:
// the lease runs on the store from when it took the claim, so a reply that
// came late (here by half the lease) must not lengthen the handler's time.
// Otherwise another instance takes the event over when the lease ends while
// the handler, keeping within its ctx, still runs: the effect twice.
func TestMiddlewareSlowClaimReply(t *testing.T) {
	const lease = 200 * time.Millisecond
	delay := &atomic.Int64{}
	var dl net.Dialer
	slow := redis.NewClient(&redis.Options{
		Addr: testenv.RedisAddr(t),
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := dl.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &slowConn{Conn: conn, delay: delay}, nil
		},
	})
	t.Cleanup(func() { _ = slow.Close() })
	s, prefix := redisStore(t, slow)
	other, err := dedupe.NewRedisStore(testenv.Redis(t), dedupe.RedisConfig{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	mw, err := dedupe.Middleware(s, dedupe.Config{Group: "g", Lease: lease})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// Once with no delay, so that the delayed reply is the script's own,
	// not a NOSCRIPT.
	if err := mw(func(context.Context, events.Event) error { return nil })(ctx, events.New("/t", "t", nil)); err != nil {
		t.Fatal(err)
	}
	e := events.New("/t", "t", nil)
	overlap := false
	delay.Store(int64(lease / 2))
	err = mw(func(hctx context.Context, e events.Event) error {
		// Another instance tries to take the event over while the
		// handler's ctx lives.
		for hctx.Err() == nil {
			c, err := other.Claim(ctx, "g", dedupe.Key(e), lease)
			if err != nil {
				return err
			}
			if c.Status == dedupe.Claimed {
				overlap = hctx.Err() == nil
				return other.Release(ctx, c)
			}
			time.Sleep(2 * time.Millisecond)
		}
		return hctx.Err()
	})(ctx, e)
	if delay.Load() != 0 {
		t.Fatal("no reply was delayed")
	}
	if overlap {
		t.Fatal("another instance claimed the event while the handler's ctx still lived")
	}
	_ = err // the handler ran out of time: its error is expected
}
