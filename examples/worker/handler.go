package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/dedupe"
)

// The event types the worker consumes and publishes.
const (
	TypeOrderPlaced  = "com.example.order.placed"
	TypeOrderCounted = "com.example.order.counted"
)

// Order is the data of a com.example.order.placed event, and of the
// com.example.order.counted event that follows it.
type Order struct {
	Order    string `json:"order"`
	Customer string `json:"customer"`
}

// maxIDLen bounds an order's and a customer's ID: they come from another
// service's events and name Redis keys.
const maxIDLen = 128

func (o Order) validate() error {
	for _, f := range []struct{ name, v string }{{"order", o.Order}, {"customer", o.Customer}} {
		switch {
		case f.v == "":
			return fmt.Errorf("%s is empty", f.name)
		case len(f.v) > maxIDLen:
			return fmt.Errorf("%s is %d bytes, more than %d", f.name, len(f.v), maxIDLen)
		case !utf8.ValidString(f.v):
			return fmt.Errorf("%s is not UTF-8", f.name)
		}
	}
	return nil
}

// counter counts orders per customer in Redis, exactly once per event, and
// announces each counted order.
type counter struct {
	store  *dedupe.RedisStore
	prefix string           // of the counters' keys
	source string           // of the follow-up events
	pub    events.Publisher // of the follow-up events
	log    *slog.Logger
}

// key is the Redis key of a customer's counter.
func (c *counter) key(customer string) string { return c.prefix + "orders:" + customer }

// countedID is the ID of the follow-up of the event with this source and
// ID: the same for every delivery of the event, so that a follow-up
// published twice (the instance died before its effect was recorded) is
// one event for its consumers' dedupe.
func countedID(source, id string) string {
	return uuid.NewSHA1(uuid.NameSpaceURL, []byte(source+"#"+id)).String()
}

// handle is the events.Handler. It runs behind the dedupe batch path
// (SubscriberConfig.Batch), which claims the event before it runs and skips
// an event already done.
//
// The order is what makes it exactly once:
//
//  1. The follow-up is published first, with an ID derived from the
//     order's: published at least once, a repeat carrying the same ID.
//     Published after the count, it would be lost when the instance died
//     in between (the redelivery finds the event done and skips it).
//  2. The counter is incremented in the same Lua script that marks the
//     claim done (RedisStore.DoneWith): both happen, or neither, so no
//     death and no redelivery can count an order twice or not at all.
//
// Invalid data is Permanent: the same event would fail again, so it goes to
// the dead-letter topic at once. A failed publish is Unavailable: Kafka, not
// the event, is at fault, and the subscriber retries it in place until
// Kafka is back instead of dead-lettering it.
func (c *counter) handle(ctx context.Context, e events.Event) error {
	if e.Type != TypeOrderPlaced {
		return nil // not ours; the claim is marked done all the same
	}
	var o Order
	if err := json.Unmarshal(e.Data, &o); err != nil {
		return events.Permanent(fmt.Errorf("order event %s: data: %w", e.ID, err))
	}
	if err := o.validate(); err != nil {
		return events.Permanent(fmt.Errorf("order event %s: %w", e.ID, err))
	}
	claim, ok := dedupe.FromContext(ctx)
	if !ok {
		// A wiring mistake: the Deduper is not the subscriber's Batch.
		return events.Permanent(errors.New("no dedupe claim: the handler must run behind dedupe"))
	}

	data, err := json.Marshal(o)
	if err != nil {
		return err
	}
	f := events.New(c.source, TypeOrderCounted, data)
	f.ID = countedID(e.Source, e.ID)
	f.Subject = o.Customer // the key: a customer's follow-ups stay in order
	f.DataContentType = "application/json"
	if err := c.pub.Publish(ctx, f); err != nil {
		if errors.Is(err, events.ErrInvalid) {
			return events.Permanent(fmt.Errorf("follow-up of %s: %w", e.ID, err))
		}
		return events.Unavailable(fmt.Errorf("publishing the follow-up of %s: %w", e.ID, err))
	}

	var n *redis.IntCmd
	err = c.store.DoneWith(ctx, claim, func(ctx context.Context, p redis.Pipeliner) error {
		n = p.Incr(ctx, c.key(o.Customer))
		return nil
	})
	if err != nil {
		// Unavailable when Redis is down, ErrLeaseLost when the claim
		// ran out: returned as is, as dedupe asks, so the subscriber
		// retries and the retry finds the event done or runs it once.
		return err
	}
	c.log.DebugContext(ctx, "order counted", "order", o.Order, "customer", o.Customer, "orders", n.Val())
	return nil
}
