package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
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

	// cluster is set on a Redis Cluster, where the counter is not in the
	// dedupe record's slot: the count is then made idempotent per event
	// (countOnce) instead of being recorded with the done mark.
	cluster bool
	rdb     redis.UniversalClient // for countOnce
	markTTL time.Duration         // how long countOnce remembers an event
}

// counterKey is the Redis key of a customer's counter, under prefix. The
// hash tag, "{orders:<customer>}", never empty, puts the counter and
// countOnce's marks of the customer's orders in one Cluster slot.
func counterKey(prefix, customer string) string { return prefix + "{orders:" + customer + "}" }

// key is the Redis key of a customer's counter.
func (c *counter) key(customer string) string { return counterKey(c.prefix, customer) }

// countOnce increments the counter KEYS[1] unless the event whose mark is
// KEYS[2] was counted already, and marks it counted for ARGV[1] ms, in one
// step. It returns the counter. Run again for the same event, it counts
// nothing: it is safe to send twice, and two instances running one event
// at once (a claim taken over) count it once.
var countOnce = redis.NewScript(`
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then
  return redis.call('INCR', KEYS[1])
end
return tonumber(redis.call('GET', KEYS[1]) or '0')
`)

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
//     death and no redelivery can count an order twice or not at all. On
//     a Redis Cluster, where one script cannot write both (they are in
//     different slots), the count is idempotent per event instead
//     (countOnce: a mark of the event beside the customer's counter), and
//     the Deduper marks the event done once the handler returns.
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

	if c.cluster {
		// The counter is in the customer's slot, not the record's: count
		// once per event by a mark beside the counter, and let the
		// Deduper mark the event done after the handler.
		n, err := countOnce.Run(ctx, c.rdb, []string{c.key(o.Customer), c.key(o.Customer) + ":counted:" + f.ID}, c.markTTL.Milliseconds()).Int64()
		if err != nil {
			err = fmt.Errorf("counting order event %s: %w", e.ID, err)
			if ctx.Err() != nil || !redisUnavailable(err) {
				return err
			}
			return events.Unavailable(err)
		}
		c.log.DebugContext(ctx, "order counted", "order", o.Order, "customer", o.Customer, "orders", n)
		return nil
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

// unavailableReplies are the error codes of a Redis that cannot take a
// write now, whatever the write, as dedupe's RedisStore counts them.
var unavailableReplies = []string{"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK", "BUSY", "OOM", "NOREPLICAS", "MISCONF"}

// redisUnavailable reports whether err is Redis's failure (no answer, or a
// server that cannot take a write now), which the subscriber waits out,
// rather than the count's own error reply (WRONGTYPE: the counter's key
// holds something else), which is retried and then dead-lettered, as
// DoneWith's is.
func redisUnavailable(err error) bool {
	var reply redis.Error
	if !errors.As(err, &reply) {
		return true
	}
	msg := reply.Error()
	for _, p := range unavailableReplies {
		// Redis 7 replies with a command's error as it is; before 7,
		// inside "ERR Error running script (...): ...: -READONLY ...".
		if strings.HasPrefix(msg, p+" ") || strings.HasPrefix(msg, "ERR Error running script") && strings.Contains(msg, ": -"+p+" ") {
			return true
		}
	}
	return false
}
