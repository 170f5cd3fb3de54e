package redisstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/sessiontest"
)

// TestLostReplyIsNotRetried: a write whose reply is lost is reported as a
// failure of unknown outcome, never answered by a second run of the same
// script, which sees the first run's effect and answers something false: a
// conflict for a delta that was applied (the Manager's Update then applies
// it again), not found for an alias that was made (the Manager then deletes
// the renewed session), success for a Delete that stopped at the alias (the
// renewed session lives on). The client has go-redis's default retries, as
// testenv.Redis and most applications do.
func TestLostReplyIsNotRetried(t *testing.T) {
	c, lose := testenv.LossyRedis(t)
	s := newStore(t, c)
	ctx := t.Context()
	create := func() string {
		id := sessiontest.NewID(t, "")
		if _, err := s.Apply(ctx, id, session.Delta{Create: &session.Create{Absolute: time.Hour}, Idle: time.Hour}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	// Every script once, so that the reply lost is the script's own, not
	// a NOSCRIPT.
	warm, warmTo := create(), create()
	if _, err := s.Apply(ctx, warm, session.Delta{Set: map[string][]byte{"w": []byte("1")}, Idle: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if err := s.Alias(ctx, warm, warmTo, 2, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, warm); err != nil {
		t.Fatal(err)
	}

	t.Run("apply", func(t *testing.T) {
		id := create()
		lose.Store(true)
		_, err := s.Apply(ctx, id, session.Delta{Set: map[string][]byte{"n": []byte("1")}, Expect: map[string]uint64{"n": 0}, Idle: time.Hour})
		if lose.Swap(false) {
			t.Fatal("no reply was lost")
		}
		rec, _, lerr := s.Load(ctx, id, 0)
		if lerr != nil {
			t.Fatal(lerr)
		}
		if errors.Is(err, session.ErrConflict) && rec.Version != 1 {
			t.Fatalf("Apply answered %v, yet applied the delta (version %d, values %v)", err, rec.Version, rec.Values)
		}
	})
	t.Run("alias", func(t *testing.T) {
		old, renewed := create(), create()
		lose.Store(true)
		err := s.Alias(ctx, old, renewed, 1, time.Minute)
		if lose.Swap(false) {
			t.Fatal("no reply was lost")
		}
		rec, found, lerr := s.Load(ctx, old, 0)
		if lerr != nil {
			t.Fatal(lerr)
		}
		if errors.Is(err, session.ErrNotFound) && found && rec.ID == renewed {
			t.Fatalf("Alias answered %v, yet made the alias", err)
		}
	})
	t.Run("delete", func(t *testing.T) {
		old, renewed := create(), create()
		if err := s.Alias(ctx, old, renewed, 1, time.Minute); err != nil {
			t.Fatal(err)
		}
		lose.Store(true)
		err := s.Delete(ctx, old)
		if lose.Swap(false) {
			t.Fatal("no reply was lost")
		}
		_, found, lerr := s.Load(ctx, renewed, 0)
		if lerr != nil {
			t.Fatal(lerr)
		}
		if err == nil && found {
			t.Fatal("Delete through an alias answered success, yet the renewed session lives on")
		}
	})
}

// cancelAfter cancels when a command whose first key is key has run (not
// a NOSCRIPT: one that Redis ran).
type cancelAfter struct {
	key    string
	cancel context.CancelFunc
}

func (h *cancelAfter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *cancelAfter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if args := cmd.Args(); err == nil && len(args) > 3 && args[3] == h.key {
			h.cancel()
		}
		return err
	}
}
func (h *cancelAfter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestDeleteCancelledThroughAlias: a Delete through an alias whose context
// ends half-way leaves a state that a second Delete of the same ID ends:
// never the alias gone and its target (the renewed session) alive, which
// no ID the caller knows reaches any more.
func TestDeleteCancelledThroughAlias(t *testing.T) {
	for name, c := range clients(t) {
		t.Run(name, func(t *testing.T) {
			s, _, sessionKey := keyedStore(t, c)
			old, renewed := sessiontest.NewID(t, ""), sessiontest.NewID(t, "")
			mustCreate(t, s, old, time.Hour)
			mustCreate(t, s, renewed, time.Hour)
			if err := s.Alias(t.Context(), old, renewed, 1, time.Minute); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			c.AddHook(&cancelAfter{key: sessionKey(old), cancel: cancel})
			if err := s.Delete(ctx, old); !errors.Is(err, context.Canceled) {
				t.Fatalf("Delete cancelled after its first command: %v, want context.Canceled", err)
			}
			if err := s.Delete(t.Context(), old); err != nil {
				t.Fatal(err)
			}
			if _, found, err := s.Load(t.Context(), renewed, 0); err != nil || found {
				t.Fatalf("after a cancelled Delete and a second one, the renewed session: found=%v, %v", found, err)
			}
		})
	}
}
