package redisonce_test

import (
	"testing"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/activekit/activekit/internal/redisonce"
	"github.com/activekit/activekit/internal/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var incr = redis.NewScript(`return redis.call('INCR', KEYS[1])`)

// TestLostReplyRunsOnce: a script whose reply a dropped connection lost ran
// in Redis once; through Scripter the call fails, where the client alone
// (default retries) runs it a second time and answers from that run.
func TestLostReplyRunsOnce(t *testing.T) {
	c, lose := testenv.LossyRedis(t)
	ctx := t.Context()
	key := testenv.Name(t)
	t.Cleanup(func() { _ = c.Del(ctx, key).Err() })
	if err := incr.Load(ctx, c).Err(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		s       redis.Scripter
		runs    int64 // INCRs made by the call
		wantErr bool
	}{
		{"client", c, 2, false},
		{"once", redisonce.Scripter{C: c}, 1, true},
		{"once in a pipeline", nil, 1, true},
	} {
		before, err := c.Get(ctx, key).Int64()
		if err != nil && err != redis.Nil {
			t.Fatal(err)
		}
		// A live connection first: the lost reply must be the script's,
		// not a new connection's handshake (which go-redis may redo).
		if err := c.Ping(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Pipelined(ctx, func(p redis.Pipeliner) error { return p.Ping(ctx).Err() }); err != nil {
			t.Fatal(err)
		}
		lose.Store(true)
		if tc.s == nil {
			pipe := c.Pipeline()
			cmd := incr.EvalSha(ctx, redisonce.Scripter{C: pipe}, []string{key})
			_, _ = pipe.Exec(ctx)
			err = cmd.Err()
		} else {
			err = incr.EvalSha(ctx, tc.s, []string{key}).Err()
		}
		if (err != nil) != tc.wantErr {
			t.Errorf("%s: err %v, want an error %v", tc.name, err, tc.wantErr)
		}
		after, gerr := c.Get(ctx, key).Int64()
		if gerr != nil {
			t.Fatal(gerr)
		}
		if after-before != tc.runs {
			t.Errorf("%s: the script ran %d times, want %d", tc.name, after-before, tc.runs)
		}
	}
}
