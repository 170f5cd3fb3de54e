package kafka_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/kafka"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestKickedInstanceDoesNotRewind: an instance whose handler holds a
// rebalance past the group's rebalance timeout is dropped from the group,
// and its partition goes to another instance, which handles the records
// and commits past them. When the first instance's handler then returns,
// its commit, for a partition it no longer owns, is refused (its member is
// gone), so the group's offset is not rewound to before records the new
// owner has handled.
func TestKickedInstanceDoesNotRewind(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	group := topic + "-g"
	c.topics(t, topic)
	p := c.publisher(t, topic)
	var es []events.Event
	for range 5 {
		e := events.New("/lost", "t", nil)
		e.Subject = "k"
		es = append(es, e)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := p.Publish(ctx, es...); err != nil {
		t.Fatal(err)
	}

	logs := &logCapture{}
	s0, err := kafka.NewSubscriber(kafka.SubscriberConfig{Brokers: c.brokers, Group: group, MaxPollRecords: 1,
		ClientOpts: []kgo.Opt{kgo.RebalanceTimeout(time.Second)}, Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	holding := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	ctx0, cancel0 := context.WithCancel(ctx)
	defer cancel0()
	done0 := make(chan error, 1)
	go func() {
		done0 <- s0.Subscribe(ctx0, topic, func(_ context.Context, e events.Event) error {
			if e.ID == es[0].ID {
				once.Do(func() { close(holding) })
				<-release // past the rebalance timeout, whatever ctx says
			}
			return nil
		})
	}()
	<-holding

	var mu sync.Mutex
	handled := map[string]bool{}
	all := make(chan struct{})
	s1 := c.subscriber(t, group, kgo.RebalanceTimeout(time.Second)) // the group waits for the longest of its members'
	ctx1, cancel1 := context.WithCancel(ctx)
	defer cancel1()
	done1 := make(chan error, 1)
	go func() {
		done1 <- s1.Subscribe(ctx1, topic, func(_ context.Context, e events.Event) error {
			mu.Lock()
			defer mu.Unlock()
			handled[e.ID] = true
			if len(handled) == len(es) {
				select {
				case <-all:
				default:
					close(all)
				}
			}
			return nil
		})
	}()
	select {
	case <-all:
	case <-ctx.Done():
		close(release)
		t.Fatal("the second instance never handled every record: the first was not dropped from the group")
	}
	for c.committed(t, group, topic) < int64(len(es)) { // the second instance commits after its poll
		select {
		case <-ctx.Done():
			close(release)
			t.Fatal("the second instance never committed")
		case <-time.After(20 * time.Millisecond):
		}
	}

	// The first instance's commit of offset 1 is seen, then it goes on.
	commit := make(chan struct{})
	c.c.ControlKey(int16(kmsg.OffsetCommit), func(req kmsg.Request) (kmsg.Response, error, bool) {
		r := req.(*kmsg.OffsetCommitRequest)
		for _, tp := range r.Topics {
			for _, pp := range tp.Partitions {
				if pp.Offset == 1 { // v10 names the topic by its ID; this cluster has one group
					close(commit)
					return nil, nil, false
				}
			}
		}
		c.c.KeepControl()
		return nil, nil, false
	})
	close(release)
	select {
	case <-commit:
	case <-ctx.Done():
		t.Fatal("the first instance never tried to commit")
	}
	cancel0() // Subscribe returns once its commit has been answered
	if err := <-done0; err != nil {
		t.Fatalf("first Subscribe: %v", err)
	}
	if logs.count("commit failed") != 1 {
		t.Fatalf("the dropped instance's commit was not refused: logged %q", logs.msgs)
	}
	if got := c.committed(t, group, topic); got != int64(len(es)) {
		t.Fatalf("the group's offset is %d after the dropped instance's commit, want %d: rewound", got, len(es))
	}
	cancel1()
	if err := <-done1; err != nil {
		t.Fatalf("second Subscribe: %v", err)
	}
}
