package kafka_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/kafka"
	"github.com/activekit/activekit/internal/testenv"
)

// TestDeadLetterTooLarge: a malformed record as large as the topic takes
// cannot be copied whole to the dead-letter topic, which takes no more (the
// copy carries the reason and the dlq-* headers besides). The broker refuses
// it (MESSAGE_TOO_LARGE) however often it is sent, so dead-lettering it as it
// is would block its partition for good; the dead letter drops the value
// instead (the record stays in the topic, at the offset it names) and the
// next record is handled.
func TestDeadLetterTooLarge(t *testing.T) {
	const limit = 10_000 // the topics' and both clients' largest batch
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	prod, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...), kgo.DefaultProduceTopic(topic), kgo.ProducerBatchMaxBytes(limit))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	big := &kgo.Record{Key: []byte("k"), Value: []byte(strings.Repeat("x", limit-200)),
		Headers: []kgo.RecordHeader{{Key: "x-app", Value: []byte("kept")}}}
	ok := events.New("/t", "t", nil)
	if err := prod.ProduceSync(context.Background(), big).FirstErr(); err != nil {
		t.Fatal(err)
	}
	okr := kafka.Record(topic, ok)
	okr.Key = []byte("k") // the same partition, after the big record
	if err := prod.ProduceSync(context.Background(), okr).FirstErr(); err != nil {
		t.Fatal(err)
	}
	d := handledPastDeadLetter(t, c, topic, limit, ok.ID, "the too-large malformed one")
	if string(d.Key) != "k" || header(d, kafka.HeaderDLQOffset) != "0" || !strings.Contains(header(d, "ce_deadletterreason"), "malformed") {
		t.Errorf("dead letter lost its key, offset or reason: key %q headers %v", d.Key, d.Headers)
	}
	if header(d, kafka.HeaderDLQDropped) != "value" || header(d, "x-app") != "kept" || len(d.Value) != 0 {
		t.Errorf("dead letter: %s %q, x-app %q, %d bytes of value; want the value dropped, the headers kept",
			kafka.HeaderDLQDropped, header(d, kafka.HeaderDLQDropped), header(d, "x-app"), len(d.Value))
	}
}

// handledPastDeadLetter subscribes to topic with a producer batch limit of
// limit bytes, wants the first event handled to be want (the one after a
// record that must be dead-lettered: otherwise its partition is blocked,
// and the test fails saying what blocks it), and returns the one dead
// letter.
func handledPastDeadLetter(t *testing.T, c *cluster, topic string, limit int32, want, blocker string) *kgo.Record {
	t.Helper()
	s, err := kafka.NewSubscriber(kafka.SubscriberConfig{Brokers: c.brokers, Group: topic + "-g", Retrier: fastRetrier(t, 2),
		ClientOpts: []kgo.Opt{kgo.ProducerBatchMaxBytes(limit)}})
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan string, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.Subscribe(ctx, topic, func(ctx context.Context, e events.Event) error {
			handled <- e.ID
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
	case id := <-handled:
		if id != want {
			t.Fatalf("handled %q, want %q", id, want)
		}
	case <-time.After(wait):
		t.Fatalf("the record after %s was never handled: its partition is blocked", blocker)
	}
	dead := c.readAll(t, topic+kafka.DefaultDeadLetterSuffix)
	if len(dead) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dead))
	}
	return dead[0]
}
