package kafka_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/events/kafka"
	"github.com/twmb/franz-go/pkg/kgo"
)

// recordingBatch wraps a BatchMiddleware and checks, for every Handle, that
// the handler gets the event of the index the subscriber asked for; it
// records the event of each Handle call.
type recordingBatch struct {
	events.BatchMiddleware
	t *testing.T

	mu      sync.Mutex
	handled []string // the event ID of each Handle call, in order
}

func (m *recordingBatch) Begin(ctx context.Context, es []events.Event) (events.Batch, error) {
	b, err := m.BatchMiddleware.Begin(ctx, es)
	if err != nil {
		return nil, err
	}
	return &recordedBatch{Batch: b, m: m, es: es}, nil
}

type recordedBatch struct {
	events.Batch
	m  *recordingBatch
	es []events.Event
}

func (b *recordedBatch) Handle(ctx context.Context, i int, next events.Handler) error {
	b.m.mu.Lock()
	b.m.handled = append(b.m.handled, b.es[i].ID)
	b.m.mu.Unlock()
	return b.Batch.Handle(ctx, i, func(ctx context.Context, e events.Event) error {
		if e.ID != b.es[i].ID {
			b.m.t.Errorf("Handle(%d) ran event %s, want %s", i, e.ID, b.es[i].ID)
		}
		return next(ctx, e)
	})
}

// TestBatchMalformedInPlace: on the batch path, records that are not
// CloudEvents, among good ones of one partition, are dead-lettered in their
// place and are not part of the batch; each good record is handed to Handle
// under its own index, in order, so a handler that keeps failing
// dead-letters its own record, one that fails once is retried in place, and
// the group's offset ends after the last record.
func TestBatchMalformedInPlace(t *testing.T) {
	c, _, topic, group, store := dedupeFixture(t)
	d, err := dedupe.New(store, dedupe.Config{Group: group})
	if err != nil {
		t.Fatal(err)
	}
	good := batch(6, "one-key")
	bad := func(why string) *kgo.Record {
		return &kgo.Record{Topic: topic, Key: []byte("one-key"), Value: []byte(why)}
	}
	rs := []*kgo.Record{
		kafka.Record(topic, good[0]), bad("first"), kafka.Record(topic, good[1]), kafka.Record(topic, good[2]),
		bad("second"), bad("third"), kafka.Record(topic, good[3]), kafka.Record(topic, good[4]), kafka.Record(topic, good[5]),
	}
	prod, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	// One produce call: the records reach the subscriber in one poll, as
	// one batch, unless the broker splits them.
	if err := prod.ProduceSync(context.Background(), rs...).FirstErr(); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var order []string
	failedOnce := false
	last := make(chan struct{})
	h := func(ctx context.Context, e events.Event) error {
		mu.Lock()
		defer mu.Unlock()
		switch e.ID {
		case good[2].ID:
			if !failedOnce {
				failedOnce = true
				return errors.New("fails once")
			}
		case good[4].ID:
			return errors.New("always fails")
		}
		order = append(order, e.ID)
		if e.ID == good[5].ID {
			close(last)
		}
		return nil
	}
	m := &recordingBatch{BatchMiddleware: d, t: t}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.dedupeSubscriber(t, group, m).Subscribe(ctx, topic, h) }()
	select {
	case <-last:
	case <-time.After(wait):
		t.Fatal("the last record was never handled")
	}
	cancel() // the last record's handler succeeds all the same: committed as Subscribe returns
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := c.committed(t, group, topic); n != int64(len(rs)) {
		t.Errorf("committed offset %d, want %d", n, len(rs))
	}

	mu.Lock()
	defer mu.Unlock()
	want := []string{good[0].ID, good[1].ID, good[2].ID, good[3].ID, good[5].ID}
	if strings.Join(order, ",") != strings.Join(want, ",") {
		t.Fatalf("handled %v\nwant    %v", order, want)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	// good[2] twice, good[4] for each of its 5 attempts.
	want = []string{good[0].ID, good[1].ID, good[2].ID, good[2].ID, good[3].ID,
		good[4].ID, good[4].ID, good[4].ID, good[4].ID, good[4].ID, good[5].ID}
	if strings.Join(m.handled, ",") != strings.Join(want, ",") {
		t.Errorf("Handle calls for %v\nwant               %v", m.handled, want)
	}
	dead := c.readAll(t, topic+kafka.DefaultDeadLetterSuffix)
	wantDead := []struct{ value, id, attempts string }{
		{"first", "", "0"}, {"second", "", "0"}, {"third", "", "0"}, {"", good[4].ID, "5"},
	}
	if len(dead) != len(wantDead) {
		t.Fatalf("%d dead letters, want %d", len(dead), len(wantDead))
	}
	for k, w := range wantDead {
		r := dead[k]
		if w.value != "" && string(r.Value) != w.value || header(r, kafka.HeaderID) != w.id || header(r, "ce_deadletterattempts") != w.attempts {
			t.Errorf("dead letter %d: value %q id %q attempts %s; want %q %q %s", k, r.Value, header(r, kafka.HeaderID),
				header(r, "ce_deadletterattempts"), w.value, w.id, w.attempts)
		}
	}
	for k, e := range good {
		cl, err := store.Claim(context.Background(), group, dedupe.Key(e), time.Minute)
		want := dedupe.Done
		if k == 4 {
			want = dedupe.Claimed // dead-lettered: its claim was released, not done
		}
		if err != nil || cl.Status != want {
			t.Errorf("good[%d]: %v, %v; want %v", k, cl.Status, err, want)
		}
	}
}
