package dedupe_test

import (
	"context"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/internal/testenv"
)

// BenchmarkRedisBatch claims and marks done batches of 500 new event IDs
// with the Redis store (ClaimBatch, then DoneBatch), the store's part of the
// batch path; each op is one event. Redis's own time per event is what
// `INFO commandstats` gives for evalsha around a run, divided by b.N.
func BenchmarkRedisBatch(b *testing.B) {
	c := testenv.Redis(b)
	s, _ := redisStore(b, c)
	ctx := context.Background()
	ids := make([]string, 500)
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n += len(ids) {
		for i := range ids {
			ids[i] = events.NewID()
		}
		cs, err := s.ClaimBatch(ctx, "g", ids, time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.DoneBatch(ctx, cs); err != nil {
			b.Fatal(err)
		}
	}
}
