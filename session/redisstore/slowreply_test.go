package redisstore_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/redisstore"
	"github.com/activekit/activekit/session/sessiontest"
)

// slowReplies holds back every reply for delay (0: none) after the server
// has run the commands: a slow network or a client paused for a while.
type slowReplies struct{ delay atomic.Int64 }

func (h *slowReplies) wait() { time.Sleep(time.Duration(h.delay.Load())) }

func (h *slowReplies) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *slowReplies) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.wait()
		return err
	}
}
func (h *slowReplies) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		h.wait()
		return err
	}
}

// slowSession makes a session with an idle timeout of idle in a store whose
// client holds replies back as slow says; key is the session's Redis key.
func slowSession(t *testing.T, idle time.Duration) (redis.UniversalClient, *slowReplies, *redisstore.Store, string, string) {
	t.Helper()
	c := testenv.Redis(t)
	slow := &slowReplies{}
	c.AddHook(slow)
	s, _, sessionKey := keyedStore(t, c)
	id := sessiontest.NewID(t, "")
	if _, err := s.Apply(t.Context(), id, session.Delta{Create: &session.Create{Absolute: 24 * time.Hour}, Idle: idle}); err != nil {
		t.Fatal(err)
	}
	return c, slow, s, sessionKey(id), id
}

// TestApplySlowReplyKeepsMoving: an Apply that skipped the move within
// the resolution, and whose reply came back after the resolution lapsed,
// must not start a new resolution: it did not move the idle deadline, so the
// Applies after it would leave the deadline further and further behind
// (a session written to without a read, through blind writes, would expire
// in use).
func TestApplySlowReplyKeepsMoving(t *testing.T) {
	const idle = 2 * time.Second // resolution: 200ms
	const res = 200 * time.Millisecond
	c, slow, s, key, id := slowSession(t, idle)
	ctx := t.Context()
	expiry := func() int64 {
		t.Helper()
		e, err := c.PExpireTime(ctx, key).Result()
		if err != nil || e < 0 {
			t.Fatalf("PEXPIRETIME: %v %v", e, err)
		}
		return int64(e / time.Millisecond)
	}
	put := func() {
		t.Helper()
		if _, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"a": []byte("1")}, Idle: idle}); err != nil {
			t.Fatal(err)
		}
	}
	put() // moves the idle deadline and starts the resolution
	slow.delay.Store(int64(res + 50*time.Millisecond))
	for i := range 5 {
		start := time.Now()
		put()
		slow.delay.Store(0)
		got := expiry()
		slow.delay.Store(int64(res + 50*time.Millisecond))
		// Redis runs on this host: its clock is ours.
		if want := start.Add(idle - res - 20*time.Millisecond).UnixMilli(); got < want {
			t.Fatalf("Apply %d: idle deadline %d, %v short of the request's time plus the idle timeout; the resolution is %v",
				i, got, time.Duration(start.Add(idle).UnixMilli()-got)*time.Millisecond, res)
		}
	}
}

// TestLoadSlowReplyBoundsLag: the resolution runs from the time the
// refresh was sent, not from its reply: a Load whose reply was held back for
// longer than the resolution does not let the next Load skip the move.
func TestLoadSlowReplyBoundsLag(t *testing.T) {
	const idle = 2 * time.Second // resolution: 200ms
	const res = 200 * time.Millisecond
	c, slow, s, key, id := slowSession(t, idle)
	ctx := t.Context()
	slow.delay.Store(int64(res + 100*time.Millisecond))
	if _, found, err := s.Load(ctx, id, idle); err != nil || !found {
		t.Fatalf("Load: found=%v %v", found, err)
	}
	slow.delay.Store(0)
	start := time.Now()
	rec, found, err := s.Load(ctx, id, idle)
	if err != nil || !found {
		t.Fatalf("Load: found=%v %v", found, err)
	}
	want := start.Add(idle - res - 20*time.Millisecond)
	if rec.IdleDeadline.Before(want) {
		t.Errorf("Load: idle deadline %v short of the request's time plus the idle timeout; the resolution is %v",
			start.Add(idle).Sub(rec.IdleDeadline), res)
	}
	e, err := c.PExpireTime(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	if got := int64(e / time.Millisecond); got < want.UnixMilli() {
		t.Errorf("Load: expiry %v short of the request's time plus the idle timeout; the resolution is %v",
			time.Duration(start.Add(idle).UnixMilli()-got)*time.Millisecond, res)
	}
}
