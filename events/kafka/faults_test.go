package kafka_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/events/kafka"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

const wait = 60 * time.Second

// readAll reads every record of topic with a plain franz-go consumer that
// knows nothing of this package, and checks that the log holds exactly that
// many records (the sum of the partitions' end offsets).
func (c *cluster) readAll(t *testing.T, topic string) []*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	ends, err := c.adm.ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	ends.Each(func(o kadm.ListedOffset) { total += o.Offset })
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	for int64(len(out)) < total {
		f := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d records of %s", len(out), total, topic)
		}
		out = append(out, f.Records()...)
	}
	return out
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func countIDs(t *testing.T, rs []*kgo.Record) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, r := range rs {
		n[header(r, kafka.HeaderID)]++
	}
	return n
}

func batch(n int, key string) []events.Event {
	es := make([]events.Event, n)
	for i := range es {
		es[i] = events.New("/faults", "io.activekit.test", []byte(strconv.Itoa(i)))
		es[i].Subject = key
	}
	return es
}

// TestProduceResponseLost: the broker writes the batch and the response is
// lost (REQUEST_TIMED_OUT after the append); the producer resends, and the
// idempotent producer's sequence numbers keep the copy out of the log.
func TestProduceResponseLost(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	p := c.publisher(t, topic)
	f := c.c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: topic, Err: kerr.RequestTimedOut, Count: 2})
	es := batch(20, "order-1")
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := p.Publish(ctx, es...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if f.Hits() != 2 {
		t.Fatalf("the fault answered %d produce requests, want 2", f.Hits())
	}
	rs := c.readAll(t, topic)
	ids := countIDs(t, rs)
	if len(rs) != len(es) {
		t.Fatalf("log holds %d records for %d events (duplicates: %v)", len(rs), len(es), ids)
	}
	for i, r := range rs {
		if header(r, kafka.HeaderID) != es[i].ID {
			t.Fatalf("record %d is event %s, want %s (order)", i, header(r, kafka.HeaderID), es[i].ID)
		}
	}
}

// TestNotLeaderForPartition: produce answered NOT_LEADER_FOR_PARTITION is
// retried after a metadata refresh; nothing is lost or duplicated.
func TestNotLeaderForPartition(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	p := c.publisher(t, topic)
	f := c.c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: topic, Err: kerr.NotLeaderForPartition, Count: 3})
	var es []events.Event
	for k := range 5 {
		es = append(es, batch(20, "key-"+strconv.Itoa(k))...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := p.Publish(ctx, es...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if f.Hits() != 3 {
		t.Fatalf("the fault answered %d requests, want 3", f.Hits())
	}
	ids := countIDs(t, c.readAll(t, topic))
	for _, e := range es {
		if ids[e.ID] != 1 {
			t.Fatalf("event %s is in the log %d times", e.ID, ids[e.ID])
		}
	}
	if len(ids) != len(es) {
		t.Fatalf("log holds %d distinct events, want %d", len(ids), len(es))
	}
}

// TestPublishUncertain: the context ends while the broker holds the
// request; Publish reports ErrUncertain, and the event does land.
func TestPublishUncertain(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	p := c.publisher(t, topic)
	release := make(chan struct{})
	held := make(chan struct{}, 1)
	c.c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		select {
		case held <- struct{}{}:
		default:
		}
		c.c.SleepControl(func() { <-release })
		return nil, nil, false
	})
	ctx, cancel := context.WithCancel(context.Background())
	e := batch(1, "k")[0]
	errc := make(chan error, 1)
	go func() { errc <- p.Publish(ctx, e) }()
	<-held
	cancel()
	err := <-errc
	if !errors.Is(err, events.ErrUncertain) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish with the context ended mid-request: %v, want ErrUncertain and context.Canceled", err)
	}
	close(release)
	// The producer keeps the request it sent; the event is in the log once.
	if err := p.Client().Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	ids := countIDs(t, c.readAll(t, topic))
	if ids[e.ID] != 1 || len(ids) != 1 {
		t.Fatalf("log after an uncertain publish: %v", ids)
	}
}

// TestPlainConsumerReadsBinding: a franz-go consumer that knows nothing of
// activekit reads the CloudEvents Kafka binding's headers.
func TestPlainConsumerReadsBinding(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	p := c.publisher(t, topic)
	e := events.New("/orders", "com.example.order.created", []byte(`{"id":1}`))
	e.Subject = "order-1"
	e.DataContentType = "application/json"
	e.DataSchema = "https://example.com/order.json"
	e.Time = time.Date(2026, 5, 6, 7, 8, 9, 10000, time.UTC)
	e.SetExtension("tenant", "acme")
	keyed := events.New("/orders", "com.example.order.created", nil)
	keyed.Subject = "order-2"
	keyed.SetExtension(events.ExtPartitionKey, "customer-9")
	if err := p.Publish(context.Background(), e, keyed); err != nil {
		t.Fatal(err)
	}
	rs := c.readAll(t, topic)
	if len(rs) != 2 {
		t.Fatalf("%d records", len(rs))
	}
	byID := map[string]*kgo.Record{}
	for _, r := range rs {
		byID[header(r, "ce_id")] = r
	}
	r := byID[e.ID]
	want := map[string]string{
		"ce_specversion": "1.0", "ce_id": e.ID, "ce_source": "/orders", "ce_type": "com.example.order.created",
		"ce_subject": "order-1", "ce_time": "2026-05-06T07:08:09.00001Z", "ce_dataschema": "https://example.com/order.json",
		"content-type": "application/json", "ce_tenant": "acme",
	}
	for k, v := range want {
		if got := header(r, k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	if string(r.Key) != "order-1" || string(r.Value) != `{"id":1}` {
		t.Errorf("key %q value %q", r.Key, r.Value)
	}
	if k := byID[keyed.ID]; k == nil || string(k.Key) != "customer-9" || header(k, "ce_partitionkey") != "customer-9" {
		t.Errorf("a partitionkey is not the record key: %+v", k)
	}
}

// TestDeadLetters: malformed records, a panicking handler and a handler that
// keeps failing each go to the dead-letter topic with the reason, without
// blocking the partition or stopping the consumer.
func TestDeadLetters(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	dlq := topic + kafka.DefaultDeadLetterSuffix
	good := func(id string) []kgo.RecordHeader {
		return []kgo.RecordHeader{{Key: "ce_specversion", Value: []byte("1.0")}, {Key: "ce_id", Value: []byte(id)},
			{Key: "ce_source", Value: []byte("/x")}, {Key: "ce_type", Value: []byte("t")}}
	}
	with := func(h []kgo.RecordHeader, k, v string) []kgo.RecordHeader {
		return append(h, kgo.RecordHeader{Key: k, Value: []byte(v)})
	}
	raw := []*kgo.Record{
		{Value: []byte("not a cloudevent")},
		{Headers: with(good("bad-time"), "ce_time", "yesterday")},
		{Headers: with(good("dup-id"), "ce_id", "again")},
		{Headers: with(good("bad-source"), "ce_source", "has space")},
		{Headers: with(good("bad-utf8"), "ce_subject", "\xff")},
		{Headers: with(good("bad-ext"), "ce_Bad_Ext", "v")},
		{Headers: []kgo.RecordHeader{{Key: "content-type", Value: []byte("application/cloudevents+json")}}, Value: []byte(`{}`)},
		{Headers: good("panics")},
		{Headers: good("fails")},
		{Headers: good("ok")},
	}
	prod, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	for _, r := range raw {
		r.Key = []byte("same-key") // one partition: a bad record must not block the next
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: "x-app", Value: []byte("kept")})
	}
	if err := prod.ProduceSync(context.Background(), raw...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	s := c.subscriber(t, topic+"-g")
	handled := make(chan string, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.Subscribe(ctx, topic, func(ctx context.Context, e events.Event) error {
			handled <- e.ID
			switch e.ID {
			case "panics":
				panic("handler bug")
			case "fails":
				return errors.New("downstream refuses")
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
	for ok := false; !ok; {
		select {
		case id := <-handled:
			ok = id == "ok"
		case <-timer:
			t.Fatal("the valid record after the bad ones was never handled")
		}
	}
	dead := c.readAll(t, dlq)
	if len(dead) != 9 {
		t.Fatalf("%d dead letters, want 9", len(dead))
	}
	wantReason := []string{
		"missing: not a CloudEvent", "ce_time", "appears more than once", "ce_source", "not valid UTF-8",
		"ce_Bad_Ext", "structured event member \"specversion\": missing", "handler panicked: handler bug", "downstream refuses",
	}
	wantAttempts := []string{"0", "0", "0", "0", "0", "0", "0", "1", "5"}
	for i, d := range dead {
		reason := header(d, "ce_deadletterreason")
		if !strings.Contains(reason, wantReason[i]) {
			t.Errorf("dead letter %d: reason %q, want it to mention %q", i, reason, wantReason[i])
		}
		if i < 7 && !strings.HasPrefix(reason, "malformed") {
			t.Errorf("dead letter %d: reason %q does not say malformed", i, reason)
		}
		if a := header(d, "ce_deadletterattempts"); a != wantAttempts[i] {
			t.Errorf("dead letter %d: attempts %s, want %s", i, a, wantAttempts[i])
		}
		if string(d.Key) != "same-key" || header(d, "x-app") != "kept" || header(d, kafka.HeaderDLQTopic) != topic ||
			header(d, kafka.HeaderDLQOffset) != strconv.Itoa(i) || header(d, kafka.HeaderDLQGroup) != topic+"-g" {
			t.Errorf("dead letter %d lost its key or headers: key %q headers %v", i, d.Key, d.Headers)
		}
	}
}

// TestRebalanceDuringProcessing: a second instance joins while the first is
// mid-batch, and events keep coming until the second owns partitions. The
// rebalance waits for the batch in hand and its commit, so no event is
// handled by both instances, none is lost, and per-key order holds across
// the change of owner.
func TestRebalanceDuringProcessing(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	group := topic + "-g"
	c.topics(t, topic)
	p := c.publisher(t, topic)
	const keys = 12
	seq := 0
	var published []events.Event
	wave := func() {
		var es []events.Event
		for k := range keys {
			e := events.New("/faults", "io.activekit.test", []byte(strconv.Itoa(seq)))
			e.Subject = "key-" + strconv.Itoa(k)
			es = append(es, e)
		}
		seq++
		if err := p.Publish(context.Background(), es...); err != nil {
			t.Fatal(err)
		}
		published = append(published, es...)
	}
	for range 30 {
		wave()
	}
	joining := make(chan struct{})
	var once sync.Once
	var mu sync.Mutex
	count := map[string]int{}
	byInstance := [2]int{}
	order := map[string][]int{}
	firstHandled := make(chan struct{})
	secondHandled := make(chan struct{})
	var firstOnce, secondOnce sync.Once
	h := func(inst int) events.Handler {
		return func(ctx context.Context, e events.Event) error {
			if inst == 0 {
				firstOnce.Do(func() { close(firstHandled) })
				select { // hold the first instance's batch until the second asks to join
				case <-joining:
				case <-ctx.Done():
					return ctx.Err()
				}
			} else {
				secondOnce.Do(func() { close(secondHandled) })
			}
			mu.Lock()
			defer mu.Unlock()
			count[e.ID]++
			byInstance[inst]++
			n, _ := strconv.Atoi(string(e.Data))
			order[e.Subject] = append(order[e.Subject], n)
			return nil
		}
	}
	s0, err := kafka.NewSubscriber(kafka.SubscriberConfig{Brokers: c.brokers, Group: group, MaxPollRecords: 10})
	if err != nil {
		t.Fatal(err)
	}
	s1 := c.subscriber(t, group)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Go(func() { _ = s0.Subscribe(ctx, topic, h(0)) })
	<-firstHandled
	// The second instance's JoinGroup is observed, then the first is let go.
	c.c.ControlKey(int16(kmsg.JoinGroup), func(kmsg.Request) (kmsg.Response, error, bool) {
		once.Do(func() { close(joining) })
		return nil, nil, false
	})
	wg.Go(func() { _ = s1.Subscribe(ctx, topic, h(1)) })
	// Keep events coming until the second instance owns partitions.
	timeout := time.After(wait)
	for grown := false; !grown; {
		select {
		case <-secondHandled:
			grown = true
		case <-timeout:
			t.Fatal("the second instance never handled an event")
		case <-time.After(20 * time.Millisecond):
			wave()
		}
	}
	for {
		mu.Lock()
		n := len(count)
		mu.Unlock()
		if n == len(published) {
			break
		}
		select {
		case <-timeout:
			t.Fatalf("%d of %d events handled", n, len(published))
		case <-time.After(10 * time.Millisecond):
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for id, n := range count {
		if n != 1 {
			t.Errorf("event %s handled %d times across the rebalance", id, n)
		}
	}
	for key, seq := range order {
		for i, n := range seq {
			if n != i {
				t.Fatalf("key %s handled out of order: %v", key, seq)
			}
		}
	}
	t.Logf("%d events; instances handled %d and %d", len(published), byInstance[0], byInstance[1])
}

// killable is one instance's view of the dedupe store and the effect: after
// kill, every call fails, as if the process were gone.
type killable struct {
	s    *dedupe.RedisStore
	dead atomic.Bool
}

var errDead = errors.New("instance killed")

func (k *killable) Claim(ctx context.Context, g, id string, l time.Duration) (dedupe.Claim, error) {
	if k.dead.Load() {
		return dedupe.Claim{}, errDead
	}
	return k.s.Claim(ctx, g, id, l)
}

func (k *killable) Done(ctx context.Context, c dedupe.Claim) error {
	if k.dead.Load() {
		return errDead
	}
	return k.s.Done(ctx, c)
}

func (k *killable) Release(ctx context.Context, c dedupe.Claim) error {
	if k.dead.Load() {
		return errDead
	}
	return k.s.Release(ctx, c)
}

func (k *killable) ClaimBatch(ctx context.Context, g string, ids []string, l time.Duration) ([]dedupe.Claim, error) {
	if k.dead.Load() {
		return nil, errDead
	}
	return k.s.ClaimBatch(ctx, g, ids, l)
}

func (k *killable) DoneBatch(ctx context.Context, cs []dedupe.Claim) ([]error, error) {
	if k.dead.Load() {
		return nil, errDead
	}
	return k.s.DoneBatch(ctx, cs)
}

func (k *killable) ReleaseBatch(ctx context.Context, cs []dedupe.Claim) error {
	if k.dead.Load() {
		return errDead
	}
	return k.s.ReleaseBatch(ctx, cs)
}

var _ dedupe.BatchStore = (*killable)(nil)

// countBatch calls deliver after the first Handle of each event of a batch.
type countBatch struct {
	events.BatchMiddleware
	deliver func()
}

func (c countBatch) Begin(ctx context.Context, es []events.Event) (events.Batch, error) {
	b, err := c.BatchMiddleware.Begin(ctx, es)
	if err != nil {
		return nil, err
	}
	return &countingBatch{Batch: b, deliver: c.deliver, next: 0}, nil
}

type countingBatch struct {
	events.Batch
	deliver func()
	next    int
}

func (c *countingBatch) Handle(ctx context.Context, i int, h events.Handler) error {
	err := c.Batch.Handle(ctx, i, h)
	if i == c.next {
		c.next++
		c.deliver()
	}
	return err
}

// dedupeModes are the two ways to put dedupe in front of a handler: the
// per-event Middleware, and the subscriber's batch path.
var dedupeModes = []string{"middleware", "batch"}

// withDedupe returns the handler and the subscriber option that apply d in
// mode.
func withDedupe(mode string, d *dedupe.Deduper, h events.Handler) (events.Handler, events.BatchMiddleware) {
	if mode == "batch" {
		return h, d
	}
	return events.Chain(h, d.Middleware()), nil
}

func (c *cluster) dedupeSubscriber(t testing.TB, group string, batch events.BatchMiddleware, opts ...kgo.Opt) *kafka.Subscriber {
	t.Helper()
	s, err := kafka.NewSubscriber(kafka.SubscriberConfig{Brokers: c.brokers, Group: group, Retrier: fastRetrier(t, 5), ClientOpts: opts, Batch: batch})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestKilledAfterEffectBeforeCommit: the instance records the effect and
// then dies before its offset commit (the commits fail, then it is gone).
// The events are delivered again to the next instance, and dedupe absorbs
// them: each counter stays at 1.
func TestKilledAfterEffectBeforeCommit(t *testing.T) {
	for _, mode := range dedupeModes {
		t.Run(mode, func(t *testing.T) { testKilledAfterEffectBeforeCommit(t, mode) })
	}
}

func testKilledAfterEffectBeforeCommit(t *testing.T, mode string) {
	c, rdb, topic, group, store := dedupeFixture(t)
	es := batch(50, "k")
	if err := c.publisher(t, topic).Publish(context.Background(), es...); err != nil {
		t.Fatal(err)
	}
	commits := c.c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.OffsetCommit}, Group: group, Err: kerr.UnknownServerError, Count: -1})

	var deliveries atomic.Int32
	run := func(want int32, first bool) {
		k := &killable{s: store}
		d, err := dedupe.New(k, dedupe.Config{Group: group, Lease: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		var seen atomic.Int32
		all := make(chan struct{})
		effect := func(ctx context.Context, e events.Event) error {
			cl, _ := dedupe.FromContext(ctx)
			return store.DoneWith(ctx, cl, func(ctx context.Context, p redis.Pipeliner) error {
				p.Incr(ctx, store.Key(group, dedupe.Key(e))+":effect")
				return nil
			})
		}
		deliver := func() {
			deliveries.Add(1)
			if seen.Add(1) == want {
				close(all)
			}
		}
		// Count deliveries outside dedupe: in batch mode the subscriber
		// applies dedupe around the whole handler, so count its Handle.
		var h events.Handler
		var batch events.BatchMiddleware
		if mode == "batch" {
			h, batch = effect, countBatch{d, deliver}
		} else {
			h = func(ctx context.Context, e events.Event) error {
				defer deliver()
				return events.Chain(effect, d.Middleware())(ctx, e)
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- c.dedupeSubscriber(t, group, batch).Subscribe(ctx, topic, h)
		}()
		select {
		case <-all:
		case <-time.After(wait):
			t.Fatal("events not delivered")
		}
		if first {
			// Die only once a commit of the handled events has failed:
			// killing the store as the last event is delivered raced the
			// batch path's End, and when the kill won, nothing was
			// committed at all, which is not the case under test.
			for deadline := time.Now().Add(wait); commits.Hits() == 0; {
				if time.Now().After(deadline) {
					t.Fatal("no commit was attempted")
				}
				time.Sleep(time.Millisecond) // polling the fault's counter
			}
		}
		k.dead.Store(true)
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	run(int32(len(es)), true) // handles all, commits fail, dies
	commits.Remove()
	run(int32(len(es)), false) // gets them all again
	if d := deliveries.Load(); d != int32(2*len(es)) {
		t.Fatalf("%d deliveries, want %d (every event redelivered once)", d, 2*len(es))
	}
	for _, e := range es {
		if n, _ := rdb.Get(context.Background(), store.Key(group, dedupe.Key(e))+":effect").Int(); n != 1 {
			t.Fatalf("event %s: effect ran %d times", e.ID, n)
		}
	}
	if commits.Hits() == 0 {
		t.Fatal("no commit was failed")
	}
}

// TestExactlyOnceUnderChaos: events flow through three instances that are
// killed at random points (store and effect fail from the instant of death,
// then the consumer stops) and restarted; at the end every event's effect
// counter in Redis is exactly 1.
func TestExactlyOnceUnderChaos(t *testing.T) {
	for _, mode := range dedupeModes {
		t.Run(mode, func(t *testing.T) { testExactlyOnceUnderChaos(t, mode) })
	}
}

func testExactlyOnceUnderChaos(t *testing.T, mode string) {
	n := 10000
	if testing.Short() {
		n = 1000
	}
	c, rdb, topic, group, store := dedupeFixture(t)
	effectKey := func(id string) string { return store.Key(group, id) + ":effect" }

	var mu sync.Mutex
	pending := make(map[string]bool, n)
	all := make(chan struct{})
	var deliveries atomic.Int64
	effect := func(k *killable) events.Handler {
		return func(ctx context.Context, e events.Event) error {
			cl, _ := dedupe.FromContext(ctx)
			if k.dead.Load() {
				return errDead
			}
			err := store.DoneWith(ctx, cl, func(ctx context.Context, p redis.Pipeliner) error {
				p.Incr(ctx, effectKey(e.ID))
				return nil
			})
			if err == nil {
				mu.Lock()
				delete(pending, e.ID)
				if len(pending) == 0 {
					select {
					case <-all:
					default:
						close(all)
					}
				}
				mu.Unlock()
			}
			return err
		}
	}
	type instance struct {
		k      *killable
		cancel context.CancelFunc
		done   chan error
	}
	start := func() *instance {
		in := &instance{k: &killable{s: store}, done: make(chan error, 1)}
		d, err := dedupe.New(in.k, dedupe.Config{Group: group, Lease: time.Second, MaxWait: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		h, batch := withDedupe(mode, d, effect(in.k))
		if batch != nil { // count deliveries outside dedupe in both modes
			batch = countBatch{batch, func() { deliveries.Add(1) }}
		} else {
			h = func(next events.Handler) events.Handler {
				return func(ctx context.Context, e events.Event) error {
					deliveries.Add(1)
					return next(ctx, e)
				}
			}(h)
		}
		var ctx context.Context
		ctx, in.cancel = context.WithCancel(context.Background())
		s := c.dedupeSubscriber(t, group, batch, kgo.FetchMaxWait(200*time.Millisecond))
		go func() {
			in.done <- s.Subscribe(ctx, topic, h)
		}()
		return in
	}
	var lostCommits atomic.Int32
	kill := func(in *instance, loseCommit bool) {
		in.k.dead.Store(true)
		if loseCommit {
			// It dies before its last commit reaches the broker.
			c.c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.OffsetCommit}, Group: group, Err: kerr.UnknownServerError, Count: 1})
			lostCommits.Add(1)
		}
		in.cancel()
		if err := <-in.done; err != nil {
			t.Errorf("Subscribe: %v", err)
		}
	}

	es := make([]events.Event, n)
	for i := range es {
		es[i] = events.New("/chaos", "io.activekit.chaos", nil)
		es[i].Subject = "entity-" + strconv.Itoa(i%100)
		pending[es[i].ID] = true
	}
	instances := []*instance{start(), start(), start()}
	pub := c.publisher(t, topic)
	go func() {
		for len(es) > 0 {
			b := es[:min(500, len(es))]
			es = es[len(b):]
			if err := pub.Publish(context.Background(), b...); err != nil {
				t.Errorf("Publish: %v", err)
				return
			}
		}
	}()
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	kills := 0
	deadline := time.After(50 * time.Second)
chaos:
	for {
		select {
		case <-all:
			break chaos
		case <-deadline:
			mu.Lock()
			t.Errorf("%d of %d events without an effect after 50s", len(pending), n)
			mu.Unlock()
			break chaos
		case <-time.After(time.Duration(100+rnd.IntN(400)) * time.Millisecond):
			i := rnd.IntN(len(instances))
			kill(instances[i], rnd.IntN(2) == 0)
			instances[i] = start()
			kills++
		}
	}
	for _, in := range instances {
		kill(in, false)
	}
	// Every effect counter is exactly 1.
	ctx := context.Background()
	mu.Lock()
	defer mu.Unlock()
	var ids []string
	for id := range countIDs(t, c.readAll(t, topic)) {
		ids = append(ids, id)
	}
	if len(ids) != n {
		t.Fatalf("log holds %d distinct events, want %d", len(ids), n)
	}
	bad := 0
	for i := 0; i < len(ids); i += 500 {
		chunk := ids[i:min(i+500, len(ids))]
		keys := make([]string, len(chunk))
		for j, id := range chunk {
			keys[j] = effectKey(id)
		}
		vals, err := rdb.MGet(ctx, keys...).Result()
		if err != nil {
			t.Fatal(err)
		}
		for j, v := range vals {
			if s, _ := v.(string); s != "1" {
				bad++
				if bad < 10 {
					t.Errorf("event %s: effect counter %v, want 1", chunk[j], v)
				}
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d events did not have exactly one effect", bad, n)
	}
	t.Logf("%s: %d events, %d deliveries (%d repeats absorbed), %d instance kills, %d of them before a commit", mode, n, deliveries.Load(), deliveries.Load()-int64(n), kills, lostCommits.Load())
}

// TestBatchDedupeRetryAndDeadLetter: on the batch path, a handler that fails
// once is retried in place, one that keeps failing is dead-lettered, and the
// partition's order holds; every event handled is recorded as done, so a
// second group member replaying the topic runs nothing again.
func TestBatchDedupeRetryAndDeadLetter(t *testing.T) {
	c, _, topic, group, store := dedupeFixture(t)
	d, err := dedupe.New(store, dedupe.Config{Group: group})
	if err != nil {
		t.Fatal(err)
	}
	es := batch(20, "one-key")
	if err := c.publisher(t, topic).Publish(context.Background(), es...); err != nil {
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
		case es[5].ID:
			return errors.New("always fails")
		case es[8].ID:
			if !failedOnce {
				failedOnce = true
				return errors.New("fails once")
			}
		}
		order = append(order, e.ID)
		if e.ID == es[len(es)-1].ID {
			close(last)
		}
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.dedupeSubscriber(t, group, d).Subscribe(ctx, topic, h) }()
	select {
	case <-last:
	case <-time.After(wait):
		t.Fatal("the last event was never handled")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	var want []string
	for i, e := range es {
		if i != 5 {
			want = append(want, e.ID)
		}
	}
	if strings.Join(order, ",") != strings.Join(want, ",") {
		t.Fatalf("handled %v\nwant    %v", order, want)
	}
	dead := c.readAll(t, topic+kafka.DefaultDeadLetterSuffix)
	if len(dead) != 1 || header(dead[0], kafka.HeaderID) != es[5].ID || header(dead[0], "ce_deadletterattempts") != "5" {
		t.Fatalf("dead letters: %d, want es[5] after 5 attempts", len(dead))
	}
	for i, e := range es {
		cl, err := store.Claim(context.Background(), group, dedupe.Key(e), time.Minute)
		want := dedupe.Done
		if i == 5 {
			want = dedupe.Claimed // dead-lettered, not done: its claim was released
		}
		if err != nil || cl.Status != want {
			t.Errorf("es[%d]: %v, %v; want %v", i, cl.Status, err, want)
		}
	}
}

// dedupeFixture is what the dedupe fault tests share: a kfake cluster with a
// topic of its own, a consumer group name, and a Redis dedupe store under
// the topic's prefix, whose keys are removed at the end of the test.
func dedupeFixture(t *testing.T) (c *cluster, rdb *redis.Client, topic, group string, store *dedupe.RedisStore) {
	t.Helper()
	c = newCluster(t)
	rdb = testenv.Redis(t)
	topic = testenv.Name(t)
	group = topic + "-g"
	testenv.CleanupRedisPrefix(t, rdb, topic)
	c.topics(t, topic)
	store, err := dedupe.NewRedisStore(rdb, dedupe.RedisConfig{Prefix: topic + ":"})
	if err != nil {
		t.Fatal(err)
	}
	return c, rdb, topic, group, store
}
