package kafka_test

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/kafka"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
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

// TestDeadLetterRefusedIsNotCommitted: the dead-letter topic refuses the
// dead letter of a failing record three times (an authorization error the
// producer does not retry). Until a dead letter is written the record is
// neither committed nor passed over: the next record of its key waits, and
// the group's offset stays before the failing one. Then the dead letter
// lands once, the next record is handled, and both are committed.
func TestDeadLetterRefusedIsNotCommitted(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	group := topic + "-g"
	dlq := topic + kafka.DefaultDeadLetterSuffix
	c.topics(t, topic)
	p := c.publisher(t, topic)
	es := batch(2, "k") // es[0] fails for good, es[1] succeeds
	if err := p.Publish(context.Background(), es...); err != nil {
		t.Fatal(err)
	}
	// Produce requests name a topic by its ID (the name is empty) from
	// version 13 on.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	td, err := c.adm.ListTopics(ctx, dlq)
	if err != nil || td[dlq].Err != nil {
		t.Fatalf("describing %s: %v %v", dlq, err, td[dlq].Err)
	}
	dlqID := td[dlq].ID
	const refusals = 3
	var refused atomic.Int32
	refusing := make(chan struct{}, refusals)
	c.c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.c.KeepControl()
		pr := req.(*kmsg.ProduceRequest)
		if len(pr.Topics) != 1 || (pr.Topics[0].Topic != dlq && pr.Topics[0].TopicID != dlqID) || refused.Load() >= refusals {
			return nil, nil, false
		}
		refused.Add(1)
		resp := pr.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range pr.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.TopicAuthorizationFailed.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		refusing <- struct{}{}
		return resp, nil, true
	})
	s := c.subscriber(t, group)
	handled := make(chan string, 100)
	done := make(chan error, 1)
	go func() {
		done <- s.Subscribe(ctx, topic, func(_ context.Context, e events.Event) error {
			handled <- e.ID
			if e.ID == es[0].ID {
				return events.Permanent(errors.New("refused"))
			}
			return nil
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Subscribe: %v", err)
		}
	}()
	timer := time.After(wait)
	for i := 0; i < refusals; i++ {
		select {
		case <-refusing:
		case <-timer:
			t.Fatalf("the dead letter was refused %d times, want %d", refused.Load(), refusals)
		}
		// While no dead letter is written, nothing passes the failing
		// record: not the handler, not the group's offset.
		select {
		case id := <-handled:
			if id != es[0].ID {
				t.Fatalf("event %s handled while the record before it was not dead-lettered", id)
			}
		default:
		}
		if n := c.committed(t, group, topic); n != 0 {
			t.Fatalf("committed %d offsets while the failing record's dead letter was refused", n)
		}
	}
	for ok := false; !ok; {
		select {
		case id := <-handled:
			ok = id == es[1].ID
		case <-timer:
			t.Fatal("the record after the dead-lettered one was never handled")
		}
	}
	deadline := time.Now().Add(wait)
	for c.committed(t, group, topic) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("committed %d offsets, want 2", c.committed(t, group, topic))
		}
		time.Sleep(10 * time.Millisecond) // polling the broker's committed offsets
	}
	dead := c.readAll(t, dlq)
	if len(dead) != 1 || header(dead[0], kafka.HeaderID) != es[0].ID {
		t.Fatalf("dead letters %d (want 1, of %s)", len(dead), es[0].ID)
	}
}

// TestDeadLetterOutlivesRetention: a consumer that fell behind (a long
// outage of a dependency, retried in place) dead-letters a record written
// two hours ago, to a dead-letter topic that keeps records for one hour.
// The dead letter must be kept for that hour from when it was written, not
// be deleted by the next retention pass because it carries the original
// record's timestamp.
func TestDeadLetterOutlivesRetention(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	group := topic + "-g"
	dlq := topic + kafka.DefaultDeadLetterSuffix
	c.topics(t, topic)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res, err := c.adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Name: "retention.ms", Value: kadm.StringPtr("3600000")}}, dlq)
	if err == nil {
		_, err = res.On(dlq, nil)
	}
	if err != nil {
		t.Fatalf("setting retention.ms: %v", err)
	}
	r := kafka.Record(topic, batch(1, "k")[0])
	r.Timestamp = time.Now().Add(-2 * time.Hour) // written two hours ago
	if err := rawProducer(t, c).ProduceSync(ctx, r).FirstErr(); err != nil {
		t.Fatal(err)
	}
	s := c.subscriber(t, group)
	handled := make(chan struct{}, 10)
	done := make(chan error, 1)
	go func() {
		done <- s.Subscribe(ctx, topic, func(context.Context, events.Event) error {
			handled <- struct{}{}
			return events.Permanent(errors.New("refused"))
		})
	}()
	select {
	case <-handled: // the group exists
	case <-time.After(wait):
		t.Fatal("the record was never handled")
	}
	deadline := time.Now().Add(wait)
	for c.committed(t, group, topic) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the failing record was never dead-lettered and committed")
		}
		time.Sleep(10 * time.Millisecond) // polling the broker's committed offsets
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	c.c.ApplyRetention()
	starts, err := c.adm.ListStartOffsets(context.Background(), dlq)
	if err != nil {
		t.Fatal(err)
	}
	starts.Each(func(o kadm.ListedOffset) {
		if o.Offset != 0 {
			t.Errorf("dead-letter partition %d starts at %d: retention deleted the dead letter written a moment ago", o.Partition, o.Offset)
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	if dead := c.readAll(t, dlq); len(dead) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dead))
	}
}

// rawProducer returns a plain franz-go producer on c, closed when t ends.
func rawProducer(t *testing.T, c *cluster) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// TestSubscribeRefusesWeakDeadLetters: the subscriber produces dead letters
// through its own client and commits a record once its dead letter is
// acknowledged, so a client whose acknowledgement does not mean "on every
// in-sync replica" could commit past a record whose only copy, the dead
// letter, a leader failure then loses. Subscribe refuses such ClientOpts.
func TestSubscribeRefusesWeakDeadLetters(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	s, err := kafka.NewSubscriber(kafka.SubscriberConfig{Brokers: c.brokers, Group: topic + "-g",
		ClientOpts: []kgo.Opt{kgo.RequiredAcks(kgo.LeaderAck()), kgo.DisableIdempotentWrite()}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = s.Subscribe(ctx, topic, func(context.Context, events.Event) error { return nil })
	if !errors.Is(err, kafka.ErrWeakDurability) {
		t.Fatalf("Subscribe with a leader-acks client: %v, want ErrWeakDurability", err)
	}
}

// TestDeadLetterKeyTooLarge: a malformed record whose key alone is as large
// as the dead-letter topic takes. Dropping its value and headers does not
// make its dead letter fit, so dead-lettering it would block its partition
// for good; the dead letter drops the key too, and the next record of the
// partition is handled.
func TestDeadLetterKeyTooLarge(t *testing.T) {
	const limit = 10_000 // both clients' largest batch
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	prod, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...), kgo.DefaultProduceTopic(topic),
		kgo.ProducerBatchMaxBytes(2*limit), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	big := &kgo.Record{Key: bytes.Repeat([]byte("k"), limit), Value: []byte("v"), Partition: 0}
	ok := events.New("/t", "t", nil)
	okr := kafka.Record(topic, ok)
	okr.Partition = 0 // after the big record
	if err := prod.ProduceSync(context.Background(), big, okr).FirstErr(); err != nil {
		t.Fatal(err)
	}
	d := handledPastDeadLetter(t, c, topic, limit, ok.ID, "the one with a too-large key")
	if header(d, kafka.HeaderDLQDropped) != "value,headers,key" || len(d.Key) != 0 || header(d, kafka.HeaderDLQOffset) != "0" {
		t.Errorf("dead letter: %s %q, %d bytes of key, offset %q; want value, headers and key dropped, offset 0",
			kafka.HeaderDLQDropped, header(d, kafka.HeaderDLQDropped), len(d.Key), header(d, kafka.HeaderDLQOffset))
	}
}

// TestCloseDuringPublishIsUncertain: Close runs while the broker holds a
// Publish's request. Close gives up flushing after CloseTimeout and closes
// the client; the Publish waiting on it returns ErrUncertain (the request
// was sent, and the broker may write it), never "not published", and later
// calls return ErrClosed.
func TestCloseDuringPublishIsUncertain(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	p, err := kafka.NewPublisher(kafka.PublisherConfig{Topic: topic, Brokers: c.brokers, CloseTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	defer close(release)
	held := make(chan struct{}, 1)
	c.c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		held <- struct{}{}
		c.c.SleepControl(func() { <-release })
		return nil, nil, false
	})
	errc := make(chan error, 1)
	go func() { errc <- p.Publish(context.Background(), batch(1, "k")...) }()
	<-held
	if err := p.Close(); err == nil {
		t.Error("Close with a record held by the broker past CloseTimeout: nil, want the flush's error")
	}
	select {
	case err := <-errc:
		if !errors.Is(err, events.ErrUncertain) || !errors.Is(err, kgo.ErrClientClosed) {
			t.Fatalf("Publish cut off by Close: %v, want ErrUncertain and ErrClientClosed", err)
		}
	case <-time.After(wait):
		t.Fatal("Publish did not return after Close")
	}
	if err := p.Publish(context.Background(), batch(1, "k")...); !errors.Is(err, events.ErrClosed) {
		t.Fatalf("Publish after Close: %v, want ErrClosed", err)
	}
}

// TestPublishRefusesStructuredContentType: in the Kafka binding a record
// whose content-type starts with application/cloudevents is in structured
// mode, whatever other headers it has, so a binary-mode event with that
// datacontenttype would be read back as an envelope. Publish refuses it as
// invalid, publishing nothing.
func TestPublishRefusesStructuredContentType(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	p := c.publisher(t, topic)
	e := events.New("/hostile", "io.activekit.test", []byte(`{"specversion":"1.0"}`))
	e.DataContentType = "application/CloudEvents+json"
	err := p.Publish(context.Background(), e)
	var ve *events.ValidationError
	if !errors.Is(err, events.ErrInvalid) || !errors.As(err, &ve) || ve.Attribute != "datacontenttype" {
		t.Fatalf("Publish with datacontenttype %q: %v, want an invalid datacontenttype", e.DataContentType, err)
	}
}
