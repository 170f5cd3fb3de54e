package kafka_test

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/events/kafka"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/twmb/franz-go/pkg/kgo"
)

const benchBatch = 100

// BenchmarkPublish compares Publisher with franz-go used directly, on the
// same kfake cluster in one run: each op is one event, sent in synchronous
// batches of 100 from 4 goroutines, both with the idempotent producer and
// acks=all, both with the same CloudEvents headers.
func BenchmarkPublish(b *testing.B) {
	c := newCluster(b)
	b.Run("franz-go", func(b *testing.B) {
		topic := testenv.Name(b)
		c.topics(b, topic)
		cl, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...), kgo.DefaultProduceTopic(topic))
		if err != nil {
			b.Fatal(err)
		}
		defer cl.Close()
		runBatches(b, func(ctx context.Context, n int) error {
			rs := make([]*kgo.Record, n)
			for i := range rs {
				id := events.NewID()
				rs[i] = &kgo.Record{Key: []byte("order-" + strconv.Itoa(i%64)), Value: []byte(`{"n":1}`), Headers: []kgo.RecordHeader{
					{Key: "ce_specversion", Value: []byte("1.0")}, {Key: "ce_id", Value: []byte(id)},
					{Key: "ce_source", Value: []byte("/bench")}, {Key: "ce_type", Value: []byte("io.activekit.bench")},
					{Key: "ce_subject", Value: []byte("order-" + strconv.Itoa(i%64))},
					{Key: "ce_time", Value: []byte(time.Now().UTC().Format(time.RFC3339Nano))},
					{Key: "content-type", Value: []byte("application/json")},
				}}
			}
			return cl.ProduceSync(ctx, rs...).FirstErr()
		})
	})
	b.Run("activekit", func(b *testing.B) {
		topic := testenv.Name(b)
		c.topics(b, topic)
		p := c.publisher(b, topic)
		runBatches(b, func(ctx context.Context, n int) error {
			es := make([]events.Event, n)
			for i := range es {
				es[i] = events.New("/bench", "io.activekit.bench", []byte(`{"n":1}`))
				es[i].Subject = "order-" + strconv.Itoa(i%64)
				es[i].DataContentType = "application/json"
			}
			return p.Publish(ctx, es...)
		})
	})
}

// runBatches sends b.N events in batches of benchBatch from 4 goroutines.
func runBatches(b *testing.B, send func(context.Context, int) error) {
	b.ReportAllocs()
	var left atomic.Int64
	left.Store(int64(b.N))
	b.ResetTimer()
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() { // each goroutine takes a batch at a time
			n := min(benchBatch, left.Add(-benchBatch)+benchBatch)
			if n <= 0 {
				continue
			}
			if err := send(context.Background(), int(n)); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkConsume compares consuming b.N events (6 partitions) with a
// plain franz-go group consumer committing after each poll, with
// Subscriber, with Subscriber plus the per-event Redis dedupe Middleware,
// and with Subscriber plus Redis dedupe on the batch path
// (SubscriberConfig.Batch: two round trips per partition per poll), and on
// the batch path with a store that does nothing (the cost of the batch path
// itself), on the same kfake cluster in one run. The handler does nothing
// else.
func BenchmarkConsume(b *testing.B) {
	c := newCluster(b)
	rdb := testenv.Redis(b)
	fill := func(b *testing.B) string { return fillTopic(b, c) }
	b.Run("franz-go", func(b *testing.B) {
		topic := fill(b)
		cl, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...), kgo.ConsumerGroup(topic+"-g"), kgo.ConsumeTopics(topic),
			kgo.DisableAutoCommit(), kgo.BlockRebalanceOnPoll(), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
		if err != nil {
			b.Fatal(err)
		}
		defer cl.Close()
		b.ResetTimer()
		got := 0
		for got < b.N {
			f := cl.PollRecords(context.Background(), 500)
			rs := f.Records()
			for _, r := range rs {
				if _, err := kafka.Decode(r); err != nil { // the same decoding work
					b.Fatal(err)
				}
			}
			got += len(rs)
			if len(rs) > 0 {
				if err := cl.CommitRecords(context.Background(), rs...); err != nil {
					b.Fatal(err)
				}
			}
			cl.AllowRebalance()
		}
	})
	consume := func(b *testing.B, wrap func(events.Handler) events.Handler, batch events.BatchMiddleware) {
		topic := fill(b)
		s, err := kafka.NewSubscriber(kafka.SubscriberConfig{Brokers: c.brokers, Group: topic + "-g", Retrier: fastRetrier(b, 5), Batch: batch})
		if err != nil {
			b.Fatal(err)
		}
		var got atomic.Int64
		all := make(chan struct{})
		h := wrap(func(context.Context, events.Event) error {
			if got.Add(1) == int64(b.N) {
				close(all)
			}
			return nil
		})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		proc0, redis0 := processCPU(b), redisCPU(b, rdb)
		b.ResetTimer()
		go func() { done <- s.Subscribe(ctx, topic, h) }()
		<-all
		b.StopTimer()
		// CPU per event, apart: this process (the consumer and kfake's
		// brokers) and the Redis server (shared: quiet machine only).
		b.ReportMetric(float64(processCPU(b)-proc0)/float64(b.N), "proc-cpu-ns/event")
		b.ReportMetric(float64(redisCPU(b, rdb)-redis0)/float64(b.N), "redis-cpu-ns/event")
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	b.Run("activekit", func(b *testing.B) {
		consume(b, func(h events.Handler) events.Handler { return h }, nil)
	})
	b.Run("activekit+redis-dedupe", func(b *testing.B) {
		prefix := testenv.Name(b) + ":"
		testenv.CleanupRedisPrefix(b, rdb, prefix)
		store, err := dedupe.NewRedisStore(rdb, dedupe.RedisConfig{Prefix: prefix})
		if err != nil {
			b.Fatal(err)
		}
		mw, err := dedupe.Middleware(store, dedupe.Config{Group: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		consume(b, mw, nil)
	})
	b.Run("activekit+noop-batch", func(b *testing.B) {
		d, err := dedupe.New(noopStore{}, dedupe.Config{Group: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		consume(b, func(h events.Handler) events.Handler { return h }, d)
	})
	b.Run("activekit+redis-dedupe-batch", func(b *testing.B) {
		prefix := testenv.Name(b) + ":"
		testenv.CleanupRedisPrefix(b, rdb, prefix)
		store, err := dedupe.NewRedisStore(rdb, dedupe.RedisConfig{Prefix: prefix})
		if err != nil {
			b.Fatal(err)
		}
		d, err := dedupe.New(store, dedupe.Config{Group: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		consume(b, func(h events.Handler) events.Handler { return h }, d)
	})
}

// fillTopic makes a topic holding b.N events, 64 subjects, and returns its
// name.
func fillTopic(b *testing.B, c *cluster) string {
	b.Helper()
	topic := testenv.Name(b)
	c.topics(b, topic)
	p := c.publisher(b, topic)
	for left := b.N; left > 0; left -= 1000 {
		es := make([]events.Event, min(1000, left))
		for i := range es {
			es[i] = events.New("/bench", "io.activekit.bench", []byte(`{"n":1}`))
			es[i].Subject = "order-" + strconv.Itoa(i%64)
		}
		if err := p.Publish(context.Background(), es...); err != nil {
			b.Fatal(err)
		}
	}
	return topic
}

// processCPU is the CPU time this process has used, user and system, in ns.
func processCPU(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// redisCPU is the CPU time the Redis server has used (INFO cpu), in ns.
func redisCPU(b *testing.B, c redis.UniversalClient) int64 {
	info, err := c.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_user" || k == "used_cpu_sys") {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatal(err)
			}
			total += f
		}
	}
	return int64(total * 1e9)
}
