package kafka_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/kafka"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestPublishUncertainKeepsNoCallerMemory: the context ends while the
// broker holds the produce request, Publish returns ErrUncertain, and the
// caller reuses the event's Data buffer (as one returned to a pool would
// be). The broker then drops the connection, so the producer sends the
// request again. The log must hold what was published, not what the caller
// wrote into its buffer after Publish returned.
func TestPublishUncertainKeepsNoCallerMemory(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	p := c.publisher(t, topic)
	// A first publish makes the client ready (metadata, producer ID).
	if err := p.Publish(context.Background(), batch(1, "warm")...); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	held := make(chan struct{}, 1)
	c.c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		held <- struct{}{}
		c.c.SleepControl(func() { <-release })
		return nil, errors.New("connection lost"), true // closes the connection; the producer resends
	})
	buf := []byte("the published payload")
	e := events.New("/hostile", "io.activekit.test", buf)
	e.Subject = "k"
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.Publish(ctx, e) }()
	<-held
	cancel()
	if err := <-errc; !errors.Is(err, events.ErrUncertain) {
		t.Fatalf("Publish with the context ended mid-request: %v, want ErrUncertain", err)
	}
	copy(buf, bytes.Repeat([]byte("X"), len(buf))) // the caller's buffer, reused
	close(release)
	fctx, fcancel := context.WithTimeout(context.Background(), wait)
	defer fcancel()
	if err := p.Client().Flush(fctx); err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, r := range c.readAll(t, topic) {
		if header(r, kafka.HeaderID) != e.ID {
			continue
		}
		found++
		if string(r.Value) != "the published payload" {
			t.Fatalf("the log holds %q for the event, written from the caller's buffer after Publish returned", r.Value)
		}
	}
	if found != 1 {
		t.Fatalf("the log holds the event %d times, want once", found)
	}
}

// TestOldEventOutlivesRetention: an event whose time of occurrence is older
// than the topic's retention (an outbox relay catching up after an outage, a
// replay of history) is published, and the broker then applies retention.
// Retention counts from the record's timestamp; the event must stay in the
// log for the topic's retention from when it was published, not be deleted
// before any consumer reads it.
func TestOldEventOutlivesRetention(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	res, err := c.adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Name: "retention.ms", Value: kadm.StringPtr("3600000")}}, topic)
	if err == nil {
		_, err = res.On(topic, nil)
	}
	if err != nil {
		t.Fatalf("setting retention.ms: %v", err)
	}
	p := c.publisher(t, topic)
	e := events.New("/hostile", "io.activekit.test", []byte("old"))
	e.Subject = "k"
	e.Time = e.Time.Add(-2 * time.Hour)
	if err := p.Publish(ctx, e); err != nil {
		t.Fatal(err)
	}
	c.c.ApplyRetention()
	starts, err := c.adm.ListStartOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	starts.Each(func(o kadm.ListedOffset) {
		if o.Offset != 0 {
			t.Errorf("partition %d starts at %d: retention deleted the event published a moment ago", o.Partition, o.Offset)
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	rs := c.readAll(t, topic)
	if len(rs) != 1 {
		t.Fatalf("the log holds %d records, want 1", len(rs))
	}
	got, err := kafka.Decode(rs[0])
	if err != nil {
		t.Fatal(err)
	}
	if !got.Time.Equal(e.Time) {
		t.Fatalf("decoded time %v, want the event's %v", got.Time, e.Time)
	}
}
