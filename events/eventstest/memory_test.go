package eventstest

import (
	"context"
	"errors"
	"hash/fnv"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/retry"
)

// fault is a way for the in-memory pair to break a promise of the suite.
type fault int

const (
	faultNone             fault = iota
	faultRequeue                // a failed event goes to the back of its partition (legal without OrderingPerKey)
	faultDrop                   // Publish loses the second event of each call
	faultCorrupt                // Publish loses the extensions of each event
	faultPartial                // Publish stores the valid events before an invalid one
	faultOpenAfterClose         // Publish after Close succeeds
	faultReverse                // Publish stores each call's events in reverse order
	faultGiveUpEarly            // a failing event is dropped after its second failure
	faultCountUnavailable       // Unavailable errors count as attempts, and the event is dropped after five
	faultNoRedelivery           // an event whose handler was cut short by ctx is acknowledged
	faultNoGroups               // every subscriber gets every event, whatever its group
	faultLatest                 // a new group starts at the end of the topic
	faultErrOnCancel            // Subscribe returns ctx's error once ctx ends
	faultDetachedHandler        // the handler's ctx does not end with Subscribe's
	faultIgnoresEndedCtx        // Publish publishes with a context that has ended
	faultBlocksPastCtx          // Publish held by the broker ignores its context and waits for the answer
	faultOverlapKey             // the next event of a partition is handed over once the handler of the one before has started, not returned
	faultPermanentFirst         // an error marked Permanent is given up at once, even when it is also Unavailable
	faultAckBeforeStore         // Publish returns nil with its events buffered, stored when a subscription next looks for events; Close discards them
)

// parts is the number of partitions of a topic of the in-memory broker.
const parts = 4

// maxAttempts is how often the in-memory subscriber tries an event whose
// handler fails (Unavailable aside) before it drops it, as a dead-lettering
// subscriber would.
const maxAttempts = 5

// broker is an in-memory events backend with partitions keyed by
// events.Event.Key, consumer groups that own partitions, offsets committed
// after the handler succeeds, and retries in place (or, with
// faultRequeue, at the back of the partition). Its faults make it break one
// promise each, for the suite to catch.
type broker struct {
	fault fault

	mu      sync.Mutex
	topics  map[string]*memTopic
	changed chan struct{} // closed, and replaced, when anything changes
	stalls  map[string]*stall
	pending map[*memPublisher][]events.Event // faultAckBeforeStore's buffers
}

// stall holds the next publish to a topic until release.
type stall struct {
	held    chan struct{} // receives when the publish is held
	release chan struct{} // closed by release
	once    sync.Once
}

type memTopic struct {
	parts  [parts][]events.Event
	groups map[string]*memGroup
}

type memGroup struct {
	next  [parts]int  // the first offset not acknowledged
	owner [parts]*int // the subscription consuming the partition; nil when none
}

func newBroker(f fault) *broker {
	return &broker{fault: f, topics: map[string]*memTopic{}, changed: make(chan struct{}), stalls: map[string]*stall{}, pending: map[*memPublisher][]events.Event{}}
}

// features returns f with b's StallPublish.
func (b *broker) features(f Features) Features {
	f.StallPublish = b.stallPublish
	return f
}

// stallPublish implements Features.StallPublish.
func (b *broker) stallPublish(t *testing.T, topic string) (<-chan struct{}, func()) {
	st := &stall{held: make(chan struct{}, 1), release: make(chan struct{})}
	b.mu.Lock()
	b.stalls[topic] = st
	b.mu.Unlock()
	return st.held, func() { st.once.Do(func() { close(st.release) }) }
}

// constructor returns the suite's Constructor over b.
func (b *broker) constructor() Constructor {
	return func(t *testing.T, topic, group string) (events.Publisher, events.Subscriber) {
		return &memPublisher{b: b, topic: topic}, &memSubscriber{b: b, group: group}
	}
}

// notify wakes every waiting subscription; b.mu is held.
func (b *broker) notify() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// topic returns the topic of that name, made when new; b.mu is held.
func (b *broker) topic(name string) *memTopic {
	t := b.topics[name]
	if t == nil {
		t = &memTopic{groups: map[string]*memGroup{}}
		b.topics[name] = t
	}
	return t
}

func partition(e events.Event) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(e.Key()))
	return int(h.Sum32() % parts)
}

type memPublisher struct {
	b      *broker
	topic  string
	mu     sync.Mutex
	closed bool
}

func (p *memPublisher) Publish(ctx context.Context, es ...events.Event) error {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed && p.b.fault != faultOpenAfterClose {
		return events.ErrClosed
	}
	b := p.b
	var valid []events.Event
	for _, e := range es {
		if err := e.Validate(); err != nil {
			if b.fault == faultPartial {
				break
			}
			return err
		}
		valid = append(valid, e.Clone())
	}
	if err := ctx.Err(); err != nil && b.fault != faultIgnoresEndedCtx {
		return err
	}
	b.mu.Lock()
	st := b.stalls[p.topic]
	delete(b.stalls, p.topic)
	b.mu.Unlock()
	if st != nil {
		st.held <- struct{}{}
		if b.fault == faultBlocksPastCtx {
			<-st.release
		} else {
			select {
			case <-st.release:
			case <-ctx.Done():
				return errors.Join(events.ErrUncertain, ctx.Err())
			}
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.topic(p.topic)
	if b.fault == faultAckBeforeStore {
		b.pending[p] = append(b.pending[p], valid...)
		b.notify()
		return nil
	}
	if len(valid) < len(es) {
		defer b.notify()
		p.store(t, valid)
		return &events.ValidationError{Attribute: "source", Reason: "refused after storing the valid events"}
	}
	p.store(t, valid)
	b.notify()
	return nil
}

// store appends es to their partitions, as the broker's fault has it;
// b.mu is held.
func (p *memPublisher) store(t *memTopic, es []events.Event) {
	for i := range es {
		e := es[i]
		switch p.b.fault {
		case faultDrop:
			if i == 1 {
				continue
			}
		case faultCorrupt:
			e.Extensions = nil
		case faultReverse:
			e = es[len(es)-1-i]
		}
		k := partition(e)
		t.parts[k] = append(t.parts[k], e)
	}
}

func (p *memPublisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	p.b.mu.Lock()
	delete(p.b.pending, p)
	p.b.mu.Unlock()
	return nil
}

type memSubscriber struct {
	b     *broker
	group string
}

// Subscribe consumes the partitions of topic no other subscription of the
// group owns, one event at a time.
func (s *memSubscriber) Subscribe(ctx context.Context, topic string, h events.Handler) error {
	b := s.b
	me := new(int) // not a zero-size type, whose pointers may all be equal
	group := s.group
	b.mu.Lock()
	t := b.topic(topic)
	g := t.groups[group]
	if g == nil {
		g = &memGroup{}
		if b.fault == faultLatest {
			for k := range g.next {
				g.next[k] = len(t.parts[k])
			}
		}
		t.groups[group] = g
	}
	b.mu.Unlock()
	var overlap sync.WaitGroup // faultOverlapKey's handlers
	defer overlap.Wait()
	defer func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		for k := range g.owner {
			if g.owner[k] == me {
				g.owner[k] = nil
			}
		}
		b.notify()
	}()
	for {
		b.mu.Lock()
		for pub, es := range b.pending {
			if pub.topic == topic {
				pub.store(t, es)
				delete(b.pending, pub)
			}
		}
		k := -1
		for i := range g.owner {
			if g.owner[i] == nil {
				g.owner[i] = me
			}
			if g.owner[i] == me && k < 0 && g.next[i] < len(t.parts[i]) {
				k = i
			}
		}
		if k < 0 {
			changed := b.changed
			b.mu.Unlock()
			select {
			case <-ctx.Done():
				if b.fault == faultErrOnCancel {
					return ctx.Err()
				}
				return nil
			case <-changed:
				continue
			}
		}
		e := t.parts[k][g.next[k]].Clone()
		b.mu.Unlock()
		if b.fault == faultOverlapKey {
			// In order of start, but not one at a time.
			started := make(chan struct{})
			var once sync.Once
			overlap.Go(func() {
				s.deliver(ctx, func(ctx context.Context, e events.Event) error {
					once.Do(func() { close(started) })
					return h(ctx, e)
				}, e)
			})
			<-started
			b.mu.Lock()
			g.next[k]++
			b.mu.Unlock()
			continue
		}
		ack, requeue := s.deliver(ctx, h, e)
		b.mu.Lock()
		if ack {
			g.next[k]++
		}
		b.mu.Unlock()
		if requeue {
			// Delivered again after a backoff, behind what came since.
			time.AfterFunc(20*time.Millisecond, func() {
				b.mu.Lock()
				defer b.mu.Unlock()
				t.parts[k] = append(t.parts[k], e)
				b.notify()
			})
		}
		if !ack {
			if b.fault == faultErrOnCancel {
				return ctx.Err()
			}
			return nil // ctx ended
		}
	}
}

// deliver hands e to h until it succeeds, is given up, or ctx ends. It
// reports whether e's offset is to be acknowledged, and whether e is to be
// delivered again at the back of its partition.
func (s *memSubscriber) deliver(ctx context.Context, h events.Handler, e events.Event) (ack, requeue bool) {
	hctx := ctx
	if s.b.fault == faultDetachedHandler {
		hctx = context.WithoutCancel(ctx)
	}
	attempts := 0
	for {
		err := h(hctx, e)
		if err == nil {
			return true, false
		}
		if ctx.Err() != nil {
			return s.b.fault == faultNoRedelivery, false
		}
		if s.b.fault == faultPermanentFirst && permanent(ctx, err) {
			return true, false // dead-lettered
		}
		if !events.IsUnavailable(err) || s.b.fault == faultCountUnavailable {
			attempts++
			switch {
			case s.b.fault == faultRequeue:
				return true, true
			case s.b.fault == faultGiveUpEarly && attempts == 2,
				attempts == maxAttempts:
				return true, false // dead-lettered
			}
		}
		select {
		case <-ctx.Done():
			return s.b.fault == faultNoRedelivery, false
		case <-time.After(time.Millisecond):
		}
	}
}

// permanent reports whether err is marked Permanent: a retry loop that may
// try twice, whatever the error, tries it once.
func permanent(ctx context.Context, err error) bool {
	tries := 0
	_ = retry.Do(ctx, retry.Policy{MaxAttempts: 2, InitialInterval: time.Microsecond, Retryable: func(error) bool { return true }},
		func(context.Context) error { tries++; return err })
	return tries == 1
}
