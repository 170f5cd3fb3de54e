package eventstest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/internal/testenv"
)

// Features declares what an adapter promises beyond the basic contract. A
// test of an undeclared feature is skipped.
type Features struct {
	// OrderingPerKey: events with the same key are handled in publish
	// order and one at a time (the next once the handler of the one
	// before has returned), and a failing event holds back the later
	// ones of its key.
	OrderingPerKey bool
	// Persistence: events published before a group first subscribes are
	// delivered to it.
	Persistence bool
	// ConsumerGroups: subscribers of one group share the events (each is
	// handled by one of them), and every group gets every event.
	ConsumerGroups bool
	// RedeliveryAfterCrash: an event whose instance stopped before its
	// handler succeeded is delivered to another instance of the group.
	RedeliveryAfterCrash bool
	// StallPublish, when set, makes the backend hold its answer to the
	// next publish to topic until release is called; held receives once
	// that publish has reached the backend (the events may then be
	// published or not). The suite uses it to end a Publish's context
	// while the publish is in flight, and calls release at the latest when
	// the test ends; release may be called more than once. When it is nil,
	// the suite tests only a context that ended before Publish was called.
	StallPublish func(t *testing.T, topic string) (held <-chan struct{}, release func())
}

// Constructor returns a Publisher to topic and a Subscriber in consumer group
// group, as one instance of a service would make them. The suite calls it
// several times per test, for the same topic and for several groups; topic
// is new to each test (from testenv.Name), and the constructor creates it if
// the backend needs that, tolerating that it exists. Closing what it returns
// at the end of the test is the constructor's job (t.Cleanup); the suite
// closes publishers itself only where it tests Close.
type Constructor func(t *testing.T, topic, group string) (events.Publisher, events.Subscriber)

// Timeout bounds each wait of the suite for deliveries.
var timeout = 60 * time.Second

// Run runs the conformance suite, each test on its own topic.
func Run(t *testing.T, f Features, c Constructor) {
	tests := []struct {
		name string
		need bool
		fn   func(*testing.T, Features, Constructor)
	}{
		{"PublishSubscribe", true, testPublishSubscribe},
		{"InvalidEventRefused", true, testInvalidEventRefused},
		{"PublishEmptyAndClosed", true, testPublishEmptyAndClosed},
		{"PublishedBeforeCloseDelivered", true, testPublishedBeforeClose},
		{"ConcurrentPublish", true, testConcurrentPublish},
		{"PublishReturnsOnCancel", true, testPublishReturnsOnCancel},
		{"HandlerErrorRedelivered", true, testHandlerErrorRedelivered},
		{"UnavailableRetriedUntilClear", true, testUnavailable},
		{"SubscribeReturnsOnCancel", true, testSubscribeReturnsOnCancel},
		{"Persistence", f.Persistence, testPersistence},
		{"OrderingPerKey", f.OrderingPerKey, testOrderingPerKey},
		{"ConsumerGroups", f.ConsumerGroups, testConsumerGroups},
		{"RedeliveryAfterCrash", f.RedeliveryAfterCrash, testRedeliveryAfterCrash},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !tt.need {
				t.Skip("eventstest: feature not declared by the adapter")
			}
			tt.fn(t, f, c)
		})
	}
}

// scale returns n, or n/10 (at least 1) under -short.
func scale(n int) int {
	if testing.Short() {
		return max(1, n/10)
	}
	return n
}

const (
	source    = "/activekit/eventstest"
	typeEvent = "io.activekit.eventstest.event"
	typeProbe = "io.activekit.eventstest.probe"
	extSeq    = "eventstestseq"
)

// event returns a test event about key with sequence number seq.
func event(key string, seq int) events.Event {
	e := events.New(source, typeEvent, []byte(key+"#"+strconv.Itoa(seq)))
	e.Subject = key
	e.SetExtension(extSeq, strconv.Itoa(seq))
	return e
}

// collector records deliveries and signals when wanted IDs have all arrived.
type collector struct {
	mu     sync.Mutex
	count  map[string]int
	order  map[string][]int // key -> sequence numbers in delivery order
	want   map[string]bool
	missed int
	probe  chan struct{}
	done   chan struct{}
	closed bool
}

func newCollector(want []events.Event) *collector {
	c := &collector{count: map[string]int{}, order: map[string][]int{}, want: map[string]bool{}, probe: make(chan struct{}, 1), done: make(chan struct{})}
	c.expect(want)
	return c
}

func (c *collector) expect(want []events.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range want {
		if !c.want[e.ID] {
			c.want[e.ID] = true
			if c.count[e.ID] == 0 {
				c.missed++
			}
		}
	}
	c.maybeDone()
}

func (c *collector) maybeDone() {
	if c.missed == 0 && len(c.want) > 0 && !c.closed {
		c.closed = true
		close(c.done)
	}
}

// record notes a delivery of e and returns how many times it was delivered.
func (c *collector) record(e events.Event) int {
	if e.Type == typeProbe {
		select {
		case c.probe <- struct{}{}:
		default:
		}
		return 1
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.count[e.ID]++
	c.appendOrder(e)
	if c.count[e.ID] == 1 && c.want[e.ID] {
		c.missed--
		c.maybeDone()
	}
	return c.count[e.ID]
}

// attempt notes a delivery of e whose handler failed: it takes its place in
// its key's order, but e is still awaited.
func (c *collector) attempt(e events.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.appendOrder(e)
}

// appendOrder appends e's sequence number to its key's order; c.mu is held.
func (c *collector) appendOrder(e events.Event) {
	if seq, err := strconv.Atoi(e.Extension(extSeq)); err == nil {
		c.order[e.Subject] = append(c.order[e.Subject], seq)
	}
}

func (c *collector) handler() events.Handler {
	return func(_ context.Context, e events.Event) error { c.record(e); return nil }
}

func (c *collector) wait(t *testing.T) {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(timeout):
		c.mu.Lock()
		defer c.mu.Unlock()
		t.Fatalf("eventstest: %d of %d events not delivered within %v", c.missed, len(c.want), timeout)
	}
}

// duplicates returns how many deliveries were repeats.
func (c *collector) duplicates() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, k := range c.count {
		n += k - 1
	}
	return n
}

// checkOrder fails t when a key's events were first delivered out of order:
// a redelivery may repeat earlier numbers, but none may be skipped.
func (c *collector) checkOrder(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for key, seqs := range c.order {
		high := -1
		for i, s := range seqs {
			if s > high+1 {
				t.Fatalf("eventstest: key %s: event %d delivered before event %d (deliveries %v)", key, s, high+1, seqs[:i+1])
			}
			high = max(high, s)
		}
	}
}

// subscription runs Subscribe on a goroutine until stop.
type subscription struct {
	cancel context.CancelFunc
	done   chan error
}

func subscribe(t *testing.T, s events.Subscriber, topic string, h events.Handler) *subscription {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sub := &subscription{cancel: cancel, done: make(chan error, 1)}
	go func() { sub.done <- s.Subscribe(ctx, topic, h) }()
	t.Cleanup(func() { sub.stop(t) })
	return sub
}

// stop cancels the subscription and waits for Subscribe to return nil.
func (s *subscription) stop(t *testing.T) {
	t.Helper()
	s.cancel()
	select {
	case err, ok := <-s.done:
		if ok && err != nil {
			t.Errorf("eventstest: Subscribe returned %v after its context ended, want nil", err)
		}
		if ok {
			close(s.done)
		}
	case <-time.After(timeout):
		t.Errorf("eventstest: Subscribe did not return within %v of its context ending", timeout)
	}
}

// awaitReady publishes probe events until the collector sees one, so that a
// subscriber without persistence is known to be receiving.
func awaitReady(t *testing.T, p events.Publisher, c *collector) {
	t.Helper()
	deadline := time.After(timeout)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := p.Publish(context.Background(), events.New(source, typeProbe, nil)); err != nil {
			t.Fatalf("eventstest: publishing a probe: %v", err)
		}
		select {
		case <-c.probe:
			return
		case <-deadline:
			t.Fatalf("eventstest: subscriber received no probe within %v", timeout)
		case <-tick.C:
		}
	}
}

func publish(t *testing.T, p events.Publisher, es ...events.Event) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := p.Publish(ctx, es...); err != nil {
		t.Fatalf("eventstest: Publish: %v", err)
	}
}

func testPublishSubscribe(t *testing.T, _ Features, c Constructor) {
	topic := testenv.Name(t)
	p, s := c(t, topic, topic+"-g")
	full := event("order-1", 0)
	full.Time = time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.UTC)
	full.DataContentType = "application/json"
	full.DataSchema = "https://example.com/schemas/order.json"
	full.Data = []byte(`{"total":42,"bytes":"\u00e9"}`)
	full.SetExtension("comexampleext", "value with spaces/and:colons")
	full.SetExtension(events.ExtPartitionKey, "customer-7")
	minimal := events.Event{ID: events.NewID(), Source: "urn:x", SpecVersion: "1.0", Type: "t"}
	binary := event("order-2", 0)
	binary.Data = []byte{0, 1, 2, 0xff, 0xfe}
	want := []events.Event{full, minimal, binary}

	col := newCollector(want)
	var mu sync.Mutex
	got := map[string]events.Event{}
	h := func(ctx context.Context, e events.Event) error {
		mu.Lock()
		got[e.ID] = e.Clone()
		mu.Unlock()
		col.record(e)
		return nil
	}
	subscribe(t, s, topic, h)
	awaitReady(t, p, col)
	publish(t, p, want...)
	col.wait(t)
	mu.Lock()
	defer mu.Unlock()
	for _, w := range want {
		g := got[w.ID]
		if err := Equal(w, g); err != nil {
			t.Errorf("event %s round trip: %v", w.ID, err)
		}
	}
}

// Equal reports how got differs from want in any CloudEvents attribute, the
// data or the extensions, ignoring extensions got has and want lacks (such
// as the traceparent a publisher adds), or nil when they agree.
func Equal(want, got events.Event) error {
	diff := func(name, w, g string) error { return fmt.Errorf("%s = %q, want %q", name, g, w) }
	switch {
	case want.ID != got.ID:
		return diff("id", want.ID, got.ID)
	case want.Source != got.Source:
		return diff("source", want.Source, got.Source)
	case want.SpecVersion != got.SpecVersion:
		return diff("specversion", want.SpecVersion, got.SpecVersion)
	case want.Type != got.Type:
		return diff("type", want.Type, got.Type)
	case want.Subject != got.Subject:
		return diff("subject", want.Subject, got.Subject)
	case !want.Time.Equal(got.Time):
		return fmt.Errorf("time = %v, want %v", got.Time, want.Time)
	case want.DataContentType != got.DataContentType:
		return diff("datacontenttype", want.DataContentType, got.DataContentType)
	case want.DataSchema != got.DataSchema:
		return diff("dataschema", want.DataSchema, got.DataSchema)
	case !bytes.Equal(want.Data, got.Data):
		return fmt.Errorf("data = %q, want %q", got.Data, want.Data)
	}
	for k, v := range want.Extensions {
		if got.Extensions[k] != v {
			return diff("extension "+k, v, got.Extensions[k])
		}
	}
	return nil
}

func testInvalidEventRefused(t *testing.T, f Features, c Constructor) {
	topic := testenv.Name(t)
	p, s := c(t, topic, topic+"-g")
	good := event("k", 0)
	bad := event("k", 1)
	bad.Source = "not a uri reference"
	err := p.Publish(context.Background(), good, bad)
	var ve *events.ValidationError
	if !errors.Is(err, events.ErrInvalid) || !errors.As(err, &ve) || ve.Attribute != "source" {
		t.Fatalf("Publish of an invalid event: %v, want a *events.ValidationError on source", err)
	}
	// Nothing of the refused call was published: the marker published
	// after it is the first event the group sees.
	marker := event("k", 2)
	col := newCollector([]events.Event{marker})
	var mu sync.Mutex
	var seen []string
	subscribe(t, s, topic, func(ctx context.Context, e events.Event) error {
		if e.Type != typeProbe {
			mu.Lock()
			seen = append(seen, e.ID)
			mu.Unlock()
		}
		col.record(e)
		return nil
	})
	if !f.Persistence {
		awaitReady(t, p, col)
	}
	publish(t, p, marker)
	col.wait(t)
	mu.Lock()
	defer mu.Unlock()
	for _, id := range seen {
		if id == good.ID || id == bad.ID {
			t.Fatalf("event %s of the refused Publish call was delivered", id)
		}
	}
}

func testPublishEmptyAndClosed(t *testing.T, _ Features, c Constructor) {
	topic := testenv.Name(t)
	p, _ := c(t, topic, topic+"-g")
	if err := p.Publish(context.Background()); err != nil {
		t.Fatalf("Publish of no events: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := p.Publish(context.Background(), event("k", 0)); !errors.Is(err, events.ErrClosed) {
		t.Fatalf("Publish after Close: %v, want ErrClosed", err)
	}
}

// testPublishedBeforeClose: events whose Publish returned nil are durably
// accepted, so closing the Publisher at once loses none of them: a
// Publisher that answered before the backend had them, and dropped what it
// still held on Close, fails. With Persistence the group subscribes only
// after the Close, so nothing can have been read before it.
func testPublishedBeforeClose(t *testing.T, f Features, c Constructor) {
	topic := testenv.Name(t)
	p, s := c(t, topic, topic+"-g")
	es := []events.Event{event("k", 0), event("k", 1), event("j", 0)}
	col := newCollector(es)
	if !f.Persistence {
		subscribe(t, s, topic, col.handler())
		awaitReady(t, p, col)
	}
	publish(t, p, es...)
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if f.Persistence {
		subscribe(t, s, topic, col.handler())
	}
	col.wait(t)
}

// prompt bounds how long Publish may take to return once its context ended.
func prompt() time.Duration { return min(timeout, 10*time.Second) }

// publishAsync runs p.Publish(ctx, es...) on a goroutine and returns where
// its error arrives.
func publishAsync(ctx context.Context, p events.Publisher, es ...events.Event) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- p.Publish(ctx, es...) }()
	return errc
}

// testPublishReturnsOnCancel: Publish returns promptly, with an error
// matching the context's, once its context ended: when it ended before the
// call, and (with StallPublish) when it ends while the backend holds the
// publish, when the error also matches events.ErrUncertain, since the
// events may have been published. The Publisher still works afterwards.
func testPublishReturnsOnCancel(t *testing.T, f Features, c Constructor) {
	topic := testenv.Name(t)
	p, _ := c(t, topic, topic+"-g")
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	select {
	case err := <-publishAsync(ended, p, event("k", 0)):
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Publish with a context that had ended: %v, want an error matching context.Canceled", err)
		}
	case <-time.After(prompt()):
		t.Fatalf("Publish with a context that had ended did not return within %v", prompt())
	}
	if f.StallPublish == nil {
		t.Log("eventstest: no StallPublish; a context ending mid-publish is not tested")
		return
	}
	held, release := f.StallPublish(t, topic)
	t.Cleanup(release)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := publishAsync(ctx, p, event("k", 1))
	select {
	case <-held:
	case err := <-errc:
		t.Fatalf("Publish returned %v while the backend held it", err)
	case <-time.After(timeout):
		t.Fatalf("eventstest: the publish did not reach the backend within %v", timeout)
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, events.ErrUncertain) || !errors.Is(err, context.Canceled) {
			t.Fatalf("Publish whose context ended while the backend held it: %v, want an error matching events.ErrUncertain and context.Canceled", err)
		}
	case <-time.After(prompt()):
		release()
		<-errc
		t.Fatalf("Publish did not return within %v of its context ending while the backend held it", prompt())
	}
	release()
	publish(t, p, event("k", 2))
}

func testConcurrentPublish(t *testing.T, f Features, c Constructor) {
	topic := testenv.Name(t)
	p, s := c(t, topic, topic+"-g")
	const writers = 8
	n := scale(200)
	var all []events.Event
	batches := make([][]events.Event, writers)
	for w := range writers {
		for i := range n {
			e := event("writer-"+strconv.Itoa(w), i)
			batches[w] = append(batches[w], e)
			all = append(all, e)
		}
	}
	col := newCollector(all)
	subscribe(t, s, topic, col.handler())
	if !f.Persistence {
		awaitReady(t, p, col)
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers*n)
	for w := range writers {
		wg.Go(func() {
			for _, e := range batches[w] { // one event a call, sequential per key
				if err := p.Publish(context.Background(), e); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent Publish: %v", err)
	}
	col.wait(t)
	if f.OrderingPerKey {
		col.checkOrder(t)
	}
}

// failMiddle publishes three events of key k and handles them with a
// handler that fails the middle one the first n times with fail(), counting
// those deliveries among key k's when countFailed; it returns how often the
// handler failed and the deliveries of key k, in order, once all three
// succeeded.
func failMiddle(t *testing.T, f Features, c Constructor, n int, fail func() error, countFailed bool) (failures int, order []int) {
	topic := testenv.Name(t)
	p, s := c(t, topic, topic+"-g")
	es := []events.Event{event("k", 0), event("k", 1), event("k", 2)}
	failing := es[1].ID
	col := newCollector(es)
	var mu sync.Mutex
	subscribe(t, s, topic, func(ctx context.Context, e events.Event) error {
		mu.Lock()
		if e.ID == failing && failures < n {
			failures++
			mu.Unlock()
			if countFailed {
				col.attempt(e)
			}
			return fail()
		}
		mu.Unlock()
		col.record(e)
		return nil
	})
	if !f.Persistence {
		awaitReady(t, p, col)
	}
	publish(t, p, es...)
	col.wait(t)
	mu.Lock()
	defer mu.Unlock()
	col.mu.Lock()
	defer col.mu.Unlock()
	return failures, append([]int(nil), col.order["k"]...)
}

func testHandlerErrorRedelivered(t *testing.T, f Features, c Constructor) {
	failures, got := failMiddle(t, f, c, 2, func() error { return errors.New("eventstest: induced handler failure") }, true)
	if failures != 2 {
		t.Fatalf("failing event delivered %d times before success, want 3 deliveries", failures+1)
	}
	// 0, 1 (fails), 1 (fails), 1, then 2: event 2 waits for 1.
	if want := []int{0, 1, 1, 1, 2}; f.OrderingPerKey && fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("deliveries of key k: %v, want %v (a failing event holds back its key)", got, want)
	}
}

// unavailableTries is how often the handler of testUnavailable fails with
// an events.Unavailable error: more than any sane attempt limit, so a
// subscriber that counted those tries as attempts would give the event up.
const unavailableTries = 7

// testUnavailable: an event whose handler fails with an events.Unavailable
// error (a dependency is down) is tried again until it succeeds, however
// many tries that takes, and is not given up (dead-lettered) meanwhile,
// even when the error is also marked Permanent (as some of them are, in
// either nesting); with ordering per key the next event of the key waits
// for it.
func testUnavailable(t *testing.T, f Features, c Constructor) {
	var tries atomic.Int32
	failures, got := failMiddle(t, f, c, unavailableTries, func() error {
		err := errors.New("eventstest: induced outage of a dependency")
		switch tries.Add(1) % 3 {
		case 1:
			return events.Permanent(events.Unavailable(err))
		case 2:
			return events.Unavailable(events.Permanent(err))
		}
		return events.Unavailable(err)
	}, false)
	if failures != unavailableTries {
		t.Fatalf("the event failed %d times with Unavailable before it succeeded, want %d", failures, unavailableTries)
	}
	if want := []int{0, 1, 2}; f.OrderingPerKey && fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("successful deliveries of key k: %v, want %v", got, want)
	}
}

func testSubscribeReturnsOnCancel(t *testing.T, _ Features, c Constructor) {
	topic := testenv.Name(t)
	p, s := c(t, topic, topic+"-g")
	col := newCollector(nil)
	blocked := make(chan struct{}, 1)
	sub := subscribe(t, s, topic, func(ctx context.Context, e events.Event) error {
		col.record(e)
		if e.Type == typeEvent {
			blocked <- struct{}{}
			<-ctx.Done() // a handler that honours ctx
			return ctx.Err()
		}
		return nil
	})
	awaitReady(t, p, col)
	publish(t, p, event("k", 0))
	select {
	case <-blocked:
	case <-time.After(timeout):
		t.Fatal("event not delivered")
	}
	sub.stop(t)
}

func testPersistence(t *testing.T, _ Features, c Constructor) {
	topic := testenv.Name(t)
	p, _ := c(t, topic, topic+"-g")
	var es []events.Event
	for i := range scale(50) {
		es = append(es, event("k"+strconv.Itoa(i%5), i/5))
	}
	publish(t, p, es...)
	// A new instance subscribes only now.
	_, s := c(t, topic, topic+"-g")
	col := newCollector(es)
	subscribe(t, s, topic, col.handler())
	col.wait(t)
}

func testOrderingPerKey(t *testing.T, f Features, c Constructor) {
	topic := testenv.Name(t)
	p, s := c(t, topic, topic+"-g")
	keys, per := 10, scale(100)
	var all []events.Event
	for k := range keys {
		for i := range per {
			all = append(all, event("key-"+strconv.Itoa(k), i))
		}
	}
	// Interleave keys, and publish in several calls.
	col := newCollector(all)
	// A key's events are handled one at a time: the handler of each key's
	// first event stays in for a while (or until another of its key
	// comes in, which is the fault), so that a subscriber that hands over
	// the next event once a handler has started, not returned, is seen.
	var mu sync.Mutex
	inflight := map[string]int{}
	overlapped := map[string]chan struct{}{}
	var overlaps []string
	subscribe(t, s, topic, func(ctx context.Context, e events.Event) error {
		mu.Lock()
		if inflight[e.Subject] > 0 {
			overlaps = append(overlaps, e.Subject+"/"+e.Extension(extSeq))
			if ch := overlapped[e.Subject]; ch != nil {
				close(ch)
				overlapped[e.Subject] = nil
			}
		}
		inflight[e.Subject]++
		var wait chan struct{}
		if e.Type == typeEvent && e.Extension(extSeq) == "0" {
			if _, held := overlapped[e.Subject]; !held {
				wait = make(chan struct{})
				overlapped[e.Subject] = wait
			}
		}
		mu.Unlock()
		if wait != nil {
			hold := time.NewTimer(holdFirst)
			select {
			case <-wait:
			case <-hold.C:
			case <-ctx.Done():
			}
			hold.Stop()
		}
		col.record(e)
		mu.Lock()
		inflight[e.Subject]--
		mu.Unlock()
		return nil
	})
	if !f.Persistence {
		awaitReady(t, p, col)
	}
	var batch []events.Event
	for i := range per {
		for k := range keys {
			batch = append(batch, all[k*per+i])
		}
		if len(batch) >= 50 || i == per-1 {
			publish(t, p, batch...)
			batch = batch[:0]
		}
	}
	col.wait(t)
	col.checkOrder(t)
	mu.Lock()
	defer mu.Unlock()
	if len(overlaps) > 0 {
		t.Fatalf("eventstest: events handled while the handler of an earlier event of their key had not returned (key/seq): %v", overlaps)
	}
}

// holdFirst is how long OrderingPerKey keeps the handler of each key's first
// event in: a window for the fault it looks for to show, not a wait for
// anything (a conforming subscriber passes whatever its length).
const holdFirst = 50 * time.Millisecond

func testConsumerGroups(t *testing.T, f Features, c Constructor) {
	topic := testenv.Name(t)
	p, s1 := c(t, topic, topic+"-a")
	_, s2 := c(t, topic, topic+"-a")
	_, sb := c(t, topic, topic+"-b")
	var es []events.Event
	for i := range scale(200) {
		es = append(es, event("k"+strconv.Itoa(i%20), i/20))
	}
	shared := newCollector(es)
	var n1, n2 int
	var mu sync.Mutex
	counting := func(n *int) events.Handler {
		return func(ctx context.Context, e events.Event) error {
			if e.Type == typeEvent {
				mu.Lock()
				*n++
				mu.Unlock()
			}
			shared.record(e)
			return nil
		}
	}
	other := newCollector(es)
	subscribe(t, s1, topic, counting(&n1))
	subscribe(t, s2, topic, counting(&n2))
	subscribe(t, sb, topic, other.handler())
	if !f.Persistence {
		awaitReady(t, p, shared)
		awaitReady(t, p, other)
	}
	publish(t, p, es...)
	shared.wait(t)
	other.wait(t)
	mu.Lock()
	defer mu.Unlock()
	if n1 == 0 || n2 == 0 {
		t.Logf("eventstest: one member of the group handled nothing (%d and %d); the group did not share this time", n1, n2)
	}
	if d := shared.duplicates(); d > len(es)/2 {
		t.Fatalf("group a handled %d repeats of %d events: members are not sharing", d, len(es))
	}
	t.Logf("group a: members handled %d and %d events (%d repeats); group b handled all %d", n1, n2, shared.duplicates(), len(es))
}

func testRedeliveryAfterCrash(t *testing.T, f Features, c Constructor) {
	topic := testenv.Name(t)
	p, sa := c(t, topic, topic+"-g")
	_, sb := c(t, topic, topic+"-g")
	e := event("k", 0)
	started := make(chan struct{}, 1)
	a := subscribe(t, sa, topic, func(ctx context.Context, got events.Event) error {
		if got.ID == e.ID {
			select {
			case started <- struct{}{}:
			default:
			}
			<-ctx.Done() // the instance dies mid-handler
			return ctx.Err()
		}
		return nil
	})
	publish(t, p, e)
	select {
	case <-started:
	case <-time.After(timeout):
		t.Fatal("event not delivered to the first instance")
	}
	a.stop(t)
	col := newCollector([]events.Event{e})
	subscribe(t, sb, topic, col.handler())
	col.wait(t)
}

// Stress publishes many events from several publishers to a group of three
// instances, restarting instances at random while they consume when the
// adapter declares RedeliveryAfterCrash, and checks that every event is
// handled (and, with OrderingPerKey, that no key's events were reordered).
// It logs the number of repeats, which dedupe would absorb. n is scaled down
// under -short.
func Stress(t *testing.T, f Features, c Constructor, n int) {
	n = scale(n)
	topic := testenv.Name(t)
	group := topic + "-g"
	const instances, publishers, keys = 3, 4, 50
	pubs := make([]events.Publisher, publishers)
	for i := range pubs {
		pubs[i], _ = c(t, topic, group)
	}
	subs := make([]events.Subscriber, instances)
	for i := range subs {
		_, subs[i] = c(t, topic, group)
	}
	all := make([]events.Event, 0, n)
	perPub := make([][]events.Event, publishers)
	for i := range n {
		k := i % keys
		e := event("key-"+strconv.Itoa(k), i/keys)
		all = append(all, e)
		perPub[k%publishers] = append(perPub[k%publishers], e) // one key, one publisher
	}
	col := newCollector(all)
	running := make([]*subscription, instances)
	for i := range running {
		running[i] = subscribe(t, subs[i], topic, col.handler())
	}
	if !f.Persistence {
		awaitReady(t, pubs[0], col)
	}
	var wg sync.WaitGroup
	for i, p := range pubs {
		wg.Go(func() {
			es := perPub[i]
			for len(es) > 0 {
				b := es[:min(len(es), 100)]
				es = es[len(b):]
				if err := p.Publish(context.Background(), b...); err != nil {
					t.Errorf("eventstest: Publish: %v", err)
					return
				}
			}
		})
	}
	if f.RedeliveryAfterCrash {
		rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
		restarts := 0
		tick := time.NewTicker(300 * time.Millisecond)
		deadline := time.NewTimer(timeout)
		defer deadline.Stop()
	loop:
		for {
			select {
			case <-col.done:
				break loop
			case <-deadline.C:
				break loop
			case <-tick.C:
				i := rnd.IntN(instances)
				running[i].stop(t)
				running[i] = subscribe(t, subs[i], topic, col.handler())
				restarts++
			}
		}
		tick.Stop()
		t.Logf("eventstest: %d instance restarts", restarts)
	}
	wg.Wait()
	col.wait(t)
	if f.OrderingPerKey {
		col.checkOrder(t)
	}
	t.Logf("eventstest: %d events, %d repeated deliveries", n, col.duplicates())
}
