package kafka_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/kafka"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestPublishSaysWhichFailed: a Publish call some of whose events the
// client refuses (one too large for the client's batches) publishes the
// others, and its error says which events were not published, so that the
// caller can publish those again rather than guess.
func TestPublishSaysWhichFailed(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	p := c.publisher(t, topic, kgo.ProducerBatchMaxBytes(10_000))
	es := []events.Event{
		events.New("src", "t", []byte("a")),
		events.New("src", "t", bytes.Repeat([]byte("x"), 20_000)),
		events.New("src", "t", []byte("c")),
		events.New("src", "t", bytes.Repeat([]byte("y"), 20_000)),
	}
	for i := range es {
		es[i].Subject = "k" + string(rune('a'+i)) // one key each: the others' order is not at stake
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := p.Publish(ctx, es...)
	var pe *kafka.PublishError
	if !errors.As(err, &pe) {
		t.Fatalf("Publish: %v, want a *kafka.PublishError", err)
	}
	if !slices.Equal(pe.Failed, []int{1, 3}) || len(pe.Uncertain) != 0 {
		t.Fatalf("Publish: failed %v, uncertain %v; want failed [1 3], none uncertain (%v)", pe.Failed, pe.Uncertain, err)
	}
	if errors.Is(err, events.ErrUncertain) {
		t.Fatalf("Publish: %v matches ErrUncertain; every event's outcome is known", err)
	}
}
