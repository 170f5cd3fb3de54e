package dedupe_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/internal/testenv"
)

// evalUsec returns the microseconds Redis has spent in EVALSHA and EVAL
// since its statistics were last reset (INFO commandstats).
func evalUsec(tb testing.TB, c redis.UniversalClient) int64 {
	tb.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		tb.Fatal(err)
	}
	var total int64
	for line := range strings.SplitSeq(info, "\n") {
		if !strings.HasPrefix(line, "cmdstat_evalsha:") && !strings.HasPrefix(line, "cmdstat_eval:") {
			continue
		}
		for f := range strings.SplitSeq(strings.TrimSpace(line[strings.IndexByte(line, ':')+1:]), ",") {
			if v, ok := strings.CutPrefix(f, "usec="); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					tb.Fatal(err)
				}
				total += n
			}
		}
	}
	return total
}

// BenchmarkRedisBatchCost is BenchmarkRedisBatch with Redis's own time per
// event split between ClaimBatch and DoneBatch (claim-us/event,
// done-us/event), read from INFO commandstats around each call. Other
// clients' scripts running at the same time are counted too: run it on an
// otherwise idle server.
func BenchmarkRedisBatchCost(b *testing.B) {
	c := testenv.Redis(b)
	s, _ := redisStore(b, c)
	ctx := context.Background()
	ids := make([]string, 500)
	var claimUs, doneUs int64
	b.ResetTimer()
	for n := 0; n < b.N; n += len(ids) {
		for i := range ids {
			ids[i] = events.NewID()
		}
		t0 := evalUsec(b, c)
		cs, err := s.ClaimBatch(ctx, "g", ids, time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		t1 := evalUsec(b, c)
		if _, err := s.DoneBatch(ctx, cs); err != nil {
			b.Fatal(err)
		}
		t2 := evalUsec(b, c)
		claimUs += t1 - t0
		doneUs += t2 - t1
	}
	b.ReportMetric(float64(claimUs)/float64(b.N), "claim-us/event")
	b.ReportMetric(float64(doneUs)/float64(b.N), "done-us/event")
}
