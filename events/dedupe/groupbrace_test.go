package dedupe_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/internal/testenv"
)

// TestRedisGroupOpeningBrace: a group is part of the hash tag of its keys,
// "{<group>:<shard>}", and the tag ends at the group's first '}'. A group
// that starts with one makes the tag empty, so Redis hashes each whole key
// and a shard's two generations land in different slots: on a Cluster every
// script is refused (CROSSSLOT), the events Unavailable for ever; on a Ring
// each generation is on its own server, so a done mark is not seen once its
// generation is the previous one. Such a group is refused with ErrConfig; a
// '}' further in leaves a tag of its own and works.
func TestRedisGroupOpeningBrace(t *testing.T) {
	c := testenv.RedisCluster(t)
	s, _ := redisStore(t, c)
	ctx := context.Background()
	if _, err := s.Claim(ctx, "}g", "e", time.Minute); !errors.Is(err, dedupe.ErrConfig) {
		t.Fatalf("Claim with group %q: %v, want ErrConfig", "}g", err)
	}
	if _, err := s.ClaimBatch(ctx, "}g", []string{"e", "f"}, time.Minute); !errors.Is(err, dedupe.ErrConfig) {
		t.Fatalf("ClaimBatch with group %q: %v, want ErrConfig", "}g", err)
	}
	if _, err := dedupe.New(s, dedupe.Config{Group: "}g"}); !errors.Is(err, dedupe.ErrConfig) {
		t.Fatalf("New with group %q: %v, want ErrConfig", "}g", err)
	}
	cl, err := s.Claim(ctx, "a}g", "e", time.Minute)
	if err != nil || cl.Status != dedupe.Claimed {
		t.Fatalf("Claim with group %q: %+v, %v", "a}g", cl, err)
	}
	if err := s.Done(ctx, cl); err != nil {
		t.Fatalf("Done with group %q: %v", "a}g", err)
	}
}
