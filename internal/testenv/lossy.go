package testenv

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
)

// LossyRedis returns a client of the test Redis (RedisAddr), closed at the
// end of tb, with go-redis's default retries, whose connection drops instead
// of delivering the first reply read after lose is set (set clears it):
// Redis ran the command and the client never hears of it, as when a
// primary is killed or a connection reset.
func LossyRedis(tb testing.TB) (c *redis.Client, lose *atomic.Bool) {
	tb.Helper()
	lose = &atomic.Bool{}
	var d net.Dialer
	c = redis.NewClient(&redis.Options{
		Addr: RedisAddr(tb),
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &lossyConn{Conn: conn, lose: lose}, nil
		},
	})
	tb.Cleanup(func() { _ = c.Close() })
	return c, lose
}

// lossyConn drops the connection instead of delivering the first reply read
// while lose is set.
type lossyConn struct {
	net.Conn
	lose *atomic.Bool
}

func (c *lossyConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.lose.CompareAndSwap(true, false) {
		_ = c.Conn.Close()
		return 0, io.EOF
	}
	return n, err
}
