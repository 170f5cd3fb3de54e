package kafka_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/kafka"
	"github.com/activekit/activekit/internal/testenv"
)

// TestSubscribeRefusesMissingDeadLetterTopic: a subscriber whose dead-letter
// topic does not exist could not dead-letter anything, and would find out at
// its first poison record, days later, and then hold every partition it
// owns while it retries that dead letter. Subscribe says so at once, with
// an error matching ErrConfig that names the topic; once the topic exists,
// the same Subscriber runs.
func TestSubscribeRefusesMissingDeadLetterTopic(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.adm.CreateTopic(ctx, partitions, -1, nil, topic); err != nil {
		t.Fatal(err)
	}
	s := c.subscriber(t, topic+"-g")
	sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
	defer scancel()
	err := s.Subscribe(sctx, topic, func(context.Context, events.Event) error { return nil })
	if !errors.Is(err, kafka.ErrConfig) || !strings.Contains(err.Error(), topic+kafka.DefaultDeadLetterSuffix) {
		t.Fatalf("Subscribe without its dead-letter topic: %v, want ErrConfig naming %s", err, topic+kafka.DefaultDeadLetterSuffix)
	}
	if sctx.Err() != nil {
		t.Fatalf("Subscribe returned only when its context ended")
	}

	if _, err := c.adm.CreateTopics(ctx, 1, -1, nil, topic+kafka.DefaultDeadLetterSuffix); err != nil {
		t.Fatal(err)
	}
	p := c.publisher(t, topic)
	e := events.New("src", "t", nil)
	if err := p.Publish(ctx, e); err != nil {
		t.Fatal(err)
	}
	got := make(chan events.Event, 1)
	sctx, scancel = context.WithCancel(ctx)
	defer scancel()
	errc := make(chan error, 1)
	go func() {
		errc <- s.Subscribe(sctx, topic, func(_ context.Context, e events.Event) error {
			select {
			case got <- e:
			default:
			}
			return nil
		})
	}()
	select {
	case g := <-got:
		if g.ID != e.ID {
			t.Fatalf("handled %s, want %s", g.ID, e.ID)
		}
	case err := <-errc:
		t.Fatalf("Subscribe with its dead-letter topic: %v", err)
	case <-ctx.Done():
		t.Fatal("event not handled")
	}
	scancel()
	if err := <-errc; err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
}

// TestSubscribeRefusesItsOwnDeadLetterTopic: a Subscriber whose
// DeadLetterTopic is the topic it subscribes to (one config shared by a
// consumer and the tool that replays its dead letters) would read back
// every dead letter it writes, fail it again and write it again, for ever.
// Subscribe refuses, with an error matching ErrConfig.
func TestSubscribeRefusesItsOwnDeadLetterTopic(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	dlq := topic + kafka.DefaultDeadLetterSuffix
	s, err := kafka.NewSubscriber(kafka.SubscriberConfig{Brokers: c.brokers, Group: topic + "-g", DeadLetterTopic: dlq})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = s.Subscribe(ctx, dlq, func(context.Context, events.Event) error { return nil })
	if !errors.Is(err, kafka.ErrConfig) {
		t.Fatalf("Subscribe to its own dead-letter topic: %v, want ErrConfig", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("Subscribe returned only when its context ended")
	}
}
