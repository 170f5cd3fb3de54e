package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/kafka"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/retry"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestSubscribeReturnsWhileDeadLetterHeld: the handler fails for good and
// the dead-letter produce reaches a broker that holds it without answering.
// When ctx ends, Subscribe returns promptly (it does not wait for the
// broker), and the record is not committed: it was neither handled nor
// dead-lettered for sure.
func TestSubscribeReturnsWhileDeadLetterHeld(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	group := topic + "-g"
	c.topics(t, topic)
	p := c.publisher(t, topic)
	if err := p.Publish(context.Background(), batch(1, "k")...); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	defer close(release)
	held := make(chan struct{}, 1)
	c.c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		select {
		case held <- struct{}{}:
		default:
		}
		c.c.SleepControl(func() { <-release })
		return nil, nil, false
	})
	s := c.subscriber(t, group)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- s.Subscribe(ctx, topic, func(context.Context, events.Event) error {
			return events.Permanent(errors.New("refused"))
		})
	}()
	select {
	case <-held:
	case <-time.After(wait):
		t.Fatal("the dead letter was never produced")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Subscribe did not return within 10s of ctx ending while the dead-letter produce was held")
	}
	octx, ocancel := context.WithTimeout(context.Background(), wait)
	defer ocancel()
	offs, err := c.adm.FetchOffsets(octx, group)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range offs.Offsets()[topic] {
		if o.At >= 0 {
			t.Fatalf("partition %d committed at %d although its record was not dead-lettered", o.Partition, o.At)
		}
	}
}

// TestPublishCancelledBeforehand: with ctx already ended nothing is sent,
// so Publish says the events were not published (the context's error),
// never ErrUncertain, and the log stays empty.
func TestPublishCancelledBeforehand(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	p := c.publisher(t, topic)
	// A first publish makes the client ready (metadata, producer ID), so
	// that what follows is decided by ctx alone.
	if err := p.Publish(context.Background(), batch(1, "warm")...); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for i := range 20 {
		err := p.Publish(ctx, batch(3, "k")...)
		if !errors.Is(err, context.Canceled) || errors.Is(err, events.ErrUncertain) {
			t.Fatalf("Publish %d with ctx ended beforehand: %v, want context.Canceled and not ErrUncertain", i, err)
		}
	}
	if n := len(c.readAll(t, topic)); n != 1 {
		t.Fatalf("log holds %d records, want only the first publish's 1", n)
	}
}

// flakyBatch is a BatchMiddleware whose Begin and End each fail once, with
// errors a store commonly returns: a per-call timeout (wrapping
// context.DeadlineExceeded, while the subscriber's ctx is alive) and an
// inner retry loop that gave up (a *retry.Error).
type flakyBatch struct {
	mu                sync.Mutex
	begins, ends      int
	beganFailed, endd bool
}

func (f *flakyBatch) Begin(_ context.Context, es []events.Event) (events.Batch, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.begins++
	if !f.beganFailed {
		f.beganFailed = true
		return nil, fmt.Errorf("store: claim: %w", context.DeadlineExceeded)
	}
	return &flakyBatchRun{f: f}, nil
}

type flakyBatchRun struct{ f *flakyBatch }

func (b *flakyBatchRun) Handle(ctx context.Context, _ int, next events.Handler) error {
	return next(ctx, events.Event{})
}

func (b *flakyBatchRun) End(context.Context) error {
	b.f.mu.Lock()
	defer b.f.mu.Unlock()
	b.f.ends++
	if !b.f.endd {
		b.f.endd = true
		return fmt.Errorf("store: done: %w", &retry.Error{Attempts: 3, Err: errors.New("i/o timeout")})
	}
	return nil
}

// TestBatchErrorsNeverSkipRecords: Begin and End fail once with errors the
// retry package's classifier calls final. The subscriber still retries them
// until they succeed (its ctx is alive): the batch is handled, and its
// offset committed, rather than skipped while the consumer moves past it.
func TestBatchErrorsNeverSkipRecords(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	group := topic + "-g"
	c.topics(t, topic)
	p := c.publisher(t, topic)
	if err := p.Publish(context.Background(), batch(1, "k")...); err != nil {
		t.Fatal(err)
	}
	f := &flakyBatch{}
	s, err := kafka.NewSubscriber(kafka.SubscriberConfig{Brokers: c.brokers, Group: group, Retrier: fastRetrier(t, 3), Batch: f})
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan struct{}, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.Subscribe(ctx, topic, func(context.Context, events.Event) error {
			handled <- struct{}{}
			return nil
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Subscribe: %v", err)
		}
	}()
	select {
	case <-handled:
	case <-time.After(wait):
		f.mu.Lock()
		defer f.mu.Unlock()
		t.Fatalf("the event was never handled (Begin called %d times): a failed Begin skipped the batch", f.begins)
	}
	deadline := time.Now().Add(wait)
	for {
		octx, ocancel := context.WithTimeout(context.Background(), wait)
		offs, err := c.adm.FetchOffsets(octx, group)
		ocancel()
		if err != nil {
			t.Fatal(err)
		}
		var committed int64
		for _, o := range offs.Offsets()[topic] {
			if o.At > 0 {
				committed += o.At
			}
		}
		if committed == 1 {
			break
		}
		if time.Now().After(deadline) {
			f.mu.Lock()
			defer f.mu.Unlock()
			t.Fatalf("the handled event was never committed (End called %d times): a failed End left it behind", f.ends)
		}
		time.Sleep(10 * time.Millisecond) // polling the broker's committed offsets
	}
}
