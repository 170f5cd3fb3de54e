package kafka_test

import (
	"context"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/internal/testenv"
)

// TestPublishNotFailedByAnotherCallsContext: franz-go decides whether to
// fail a batch of records not yet sent by the context of its first record
// alone. When one Publish call's context ends while its event waits in a
// batch behind a request in flight, a concurrent call whose event joined
// that batch (same partition) must still publish it: its own context is
// alive, and an event the client never sent is one to send again, not a
// failure of the caller's.
func TestPublishNotFailedByAnotherCallsContext(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	p := c.publisher(t, topic)
	ev := func() events.Event {
		e := events.New("/x", "t", nil)
		e.Subject = "k" // one partition
		return e
	}
	held, release := c.stallPublish(t, topic)
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	first := make(chan error, 1)
	go func() { first <- p.Publish(ctx, ev()) }()
	<-held // the first request is in flight; what follows waits in a batch

	actx, acancel := context.WithCancel(ctx)
	a := make(chan error, 1)
	go func() { a <- p.Publish(actx, ev()) }()
	// b's Publish starts once a's record is in the client's buffer, so
	// a's is first in the batch (polled: the client signals nothing).
	for p.Client().BufferedProduceRecords() < 2 && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	b := make(chan error, 1)
	go func() { b <- p.Publish(ctx, ev()) }()
	for p.Client().BufferedProduceRecords() < 3 && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	acancel()
	if err := <-a; err == nil {
		t.Logf("a: published")
	} else {
		t.Logf("a: %v", err)
	}
	release()
	if err := <-first; err != nil {
		t.Fatalf("first Publish: %v", err)
	}
	if err := <-b; err != nil {
		t.Fatalf("Publish with a live context failed because another call's context ended: %v", err)
	}
}
