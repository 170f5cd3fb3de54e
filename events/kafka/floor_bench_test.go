package kafka_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/kafka"
	"github.com/activekit/activekit/internal/testenv"
)

// BenchmarkConsumeFloor measures the least any dedupe that keeps a record
// per event ID in Redis adds to a consumer, to tell what a Redis record
// costs on a machine from what activekit's batch path costs: a plain
// franz-go group consumer (as BenchmarkConsume's franz-go) that, for each
// poll, sends one pipeline of HSETNX <hash> <event ID> 1, one command per
// record, and skips the records whose HSETNX answered 0, before it commits.
// It is not a usable dedupe (no lease: an event whose handler fails after
// its HSETNX is never run; no done mark; no expiry), only its floor. The
// IDs go to 16 hashes, as dedupe.RedisStore's default shards do. Below
// that still, franz-go+redis-hset writes all of a poll's IDs as fields of
// one hash in one command, with no answer per ID.
func BenchmarkConsumeFloor(b *testing.B) {
	c := newCluster(b)
	rdb := testenv.Redis(b)
	for _, mode := range []string{"franz-go", "franz-go+redis-hsetnx", "franz-go+redis-hset"} {
		b.Run(mode, func(b *testing.B) {
			topic := fillTopic(b, c)
			prefix := topic + ":"
			testenv.CleanupRedisPrefix(b, rdb, prefix)
			cl, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...), kgo.ConsumerGroup(topic+"-g"), kgo.ConsumeTopics(topic),
				kgo.DisableAutoCommit(), kgo.BlockRebalanceOnPoll(), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
			if err != nil {
				b.Fatal(err)
			}
			defer cl.Close()
			ctx := context.Background()
			b.ResetTimer()
			got, ran := 0, 0
			for got < b.N {
				rs := cl.PollRecords(ctx, 500).Records()
				es := make([]events.Event, len(rs))
				for i, r := range rs {
					if es[i], err = kafka.Decode(r); err != nil {
						b.Fatal(err)
					}
				}
				switch {
				case len(es) == 0:
				case mode == "franz-go+redis-hset":
					// One command per poll, every ID a field of one hash:
					// no answer per ID, so not even a claim.
					args := make([]any, 0, 2*len(es))
					for _, e := range es {
						args = append(args, e.ID, 1)
					}
					if err := rdb.HSet(ctx, prefix+"all", args...).Err(); err != nil {
						b.Fatal(err)
					}
					ran += len(es)
				case mode == "franz-go+redis-hsetnx":
					pipe := rdb.Pipeline()
					cmds := make([]*redis.BoolCmd, len(es))
					for i, e := range es {
						cmds[i] = pipe.HSetNX(ctx, prefix+strconv.Itoa(int(rs[i].Partition)%16), e.ID, 1)
					}
					if _, err := pipe.Exec(ctx); err != nil {
						b.Fatal(err)
					}
					for _, cmd := range cmds {
						if cmd.Val() {
							ran++ // the handler would run here
						}
					}
				default:
					ran += len(es)
				}
				got += len(rs)
				if len(rs) > 0 {
					if err := cl.CommitRecords(ctx, rs...); err != nil {
						b.Fatal(err)
					}
				}
				cl.AllowRebalance()
			}
			b.StopTimer()
			if ran != got {
				b.Fatalf("%d of %d events ran", ran, got)
			}
		})
	}
}
