package dedupe_test

import (
	"context"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/events/kafka"
	"github.com/redis/go-redis/v9"
)

// ExampleMiddleware makes a handler's effect exactly-once: the effect (a
// counter) and the done mark are written in one atomic Redis script, guarded
// by the claim, so redeliveries and instance deaths at any point count once.
func ExampleMiddleware() {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer rdb.Close()
	store, err := dedupe.NewRedisStore(rdb, dedupe.RedisConfig{Prefix: "billing:"})
	if err != nil {
		panic(err)
	}
	mw, err := dedupe.Middleware(store, dedupe.Config{Group: "billing", Lease: 30 * time.Second})
	if err != nil {
		panic(err)
	}
	handler := events.Chain(func(ctx context.Context, e events.Event) error {
		claim, _ := dedupe.FromContext(ctx)
		return store.DoneWith(ctx, claim, func(ctx context.Context, tx redis.Pipeliner) error {
			// Keys named with store.Key stay in the record's Cluster slot.
			tx.IncrBy(ctx, store.Key("billing", e.ID)+":charged", 42)
			return nil
		})
	}, mw)
	_ = handler // pass it to a Subscriber: sub.Subscribe(ctx, "orders", handler)
}

// ExampleNew puts dedupe on the Kafka subscriber's batch path: per partition
// and poll, one round trip claims every event and one records them all as
// done before the offsets are committed.
func ExampleNew() {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer rdb.Close()
	store, err := dedupe.NewRedisStore(rdb, dedupe.RedisConfig{Prefix: "billing:"})
	if err != nil {
		panic(err)
	}
	d, err := dedupe.New(store, dedupe.Config{Group: "billing"})
	if err != nil {
		panic(err)
	}
	sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{Brokers: []string{"127.0.0.1:9092"}, Group: "billing", Batch: d})
	if err != nil {
		panic(err)
	}
	handler := func(ctx context.Context, e events.Event) error {
		claim, _ := dedupe.FromContext(ctx) // as with Middleware
		return store.DoneWith(ctx, claim, func(ctx context.Context, tx redis.Pipeliner) error {
			tx.IncrBy(ctx, store.Key("billing", e.ID)+":charged", 42)
			return nil
		})
	}
	_, _ = sub, handler // sub.Subscribe(ctx, "orders", handler)
}
