package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/twmb/franz-go/pkg/kgo"
)

// ErrWeakDurability reports a producer configured so that an acknowledged
// event could be lost or duplicated: acks other than all, the idempotent
// producer disabled, or in-flight records cancellable. PublisherConfig's
// AllowWeakDurability accepts such a producer.
var ErrWeakDurability = errors.New("kafka: producer durability weaker than idempotent acks=all")

// ErrConfig reports an invalid configuration.
var ErrConfig = errors.New("kafka: invalid configuration")

// PublisherConfig configures a Publisher. Topic and one of Brokers or Client
// are required; every other zero field means the default.
type PublisherConfig struct {
	// Topic is where events are published.
	Topic string
	// Brokers are the seed brokers for a client the Publisher makes, owns
	// and closes.
	Brokers []string
	// ClientOpts are added to that client's options (TLS, SASL, linger,
	// compression...). Options weaker than the defaults (idempotent
	// producer, acks=all) are refused unless AllowWeakDurability is set.
	ClientOpts []kgo.Opt
	// Client is a client the caller owns, used instead of making one; the
	// Publisher does not close it. Its durability is checked the same way.
	Client *kgo.Client
	// AllowWeakDurability accepts a producer with acks other than all,
	// without idempotence, or with AllowIdempotentProduceCancellation.
	AllowWeakDurability bool
	// Tracing injects the caller's trace context into events that carry
	// no traceparent. The zero value uses the otel globals.
	Tracing events.TracingConfig
	// CloseTimeout bounds how long Close waits for records in flight;
	// zero means 10s.
	CloseTimeout time.Duration
}

// Publisher publishes events to one Kafka topic, in the CloudEvents Kafka
// binding's binary mode, through franz-go's idempotent producer with
// acks=all. It implements events.Publisher.
//
// The producer's sequence numbers make the broker drop a batch it already
// wrote when the producer resends it after a lost response or a leader
// change, so retries inside the client never duplicate an event in the log.
// Events with the same key (the partitionkey extension, else the subject) go
// to the same partition, in the order they were published.
//
// Each Publish call waits on one goroutine of its own, which outlives the
// call only when ctx ends first, until the client resolves its records;
// Close waits for those. The client the Publisher makes runs franz-go's
// goroutines, and Close stops them.
type Publisher struct {
	cl    *kgo.Client
	owned bool
	topic string
	trace events.TracingConfig
	close time.Duration

	mu       sync.RWMutex
	closed   bool
	inflight sync.WaitGroup // the ProduceSync calls of Publish
}

var _ events.Publisher = (*Publisher)(nil)

// NewPublisher checks cfg, makes (or adopts) the client and refuses weak
// durability settings.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	if cfg.Topic == "" {
		return nil, fmt.Errorf("%w: Topic is empty", ErrConfig)
	}
	if (cfg.Client == nil) == (len(cfg.Brokers) == 0) {
		return nil, fmt.Errorf("%w: set exactly one of Brokers and Client", ErrConfig)
	}
	if cfg.Client != nil && len(cfg.ClientOpts) > 0 {
		return nil, fmt.Errorf("%w: ClientOpts apply only to a client the Publisher makes", ErrConfig)
	}
	if cfg.CloseTimeout < 0 {
		return nil, fmt.Errorf("%w: negative CloseTimeout", ErrConfig)
	}
	if cfg.CloseTimeout == 0 {
		cfg.CloseTimeout = 10 * time.Second
	}
	p := &Publisher{cl: cfg.Client, topic: cfg.Topic, trace: cfg.Tracing, close: cfg.CloseTimeout}
	if p.cl == nil {
		opts := append([]kgo.Opt{kgo.SeedBrokers(cfg.Brokers...)}, cfg.ClientOpts...)
		cl, err := kgo.NewClient(opts...)
		if err != nil {
			return nil, fmt.Errorf("kafka: new client: %w", err)
		}
		p.cl, p.owned = cl, true
	}
	if !cfg.AllowWeakDurability {
		if err := CheckDurability(p.cl); err != nil {
			if p.owned {
				p.cl.Close()
			}
			return nil, err
		}
	}
	return p, nil
}

// CheckDurability reports, as an error matching ErrWeakDurability, whether
// cl's producer settings are weaker than the idempotent producer with
// acks=all and no cancellation of in-flight records.
func CheckDurability(cl *kgo.Client) error {
	if acks, _ := cl.OptValue(kgo.RequiredAcks).(kgo.Acks); acks != kgo.AllISRAcks() {
		return fmt.Errorf("%w: RequiredAcks is not AllISRAcks", ErrWeakDurability)
	}
	if off, _ := cl.OptValue(kgo.DisableIdempotentWrite).(bool); off {
		return fmt.Errorf("%w: DisableIdempotentWrite is set", ErrWeakDurability)
	}
	if on, _ := cl.OptValue(kgo.AllowIdempotentProduceCancellation).(bool); on {
		return fmt.Errorf("%w: AllowIdempotentProduceCancellation is set", ErrWeakDurability)
	}
	return nil
}

// Topic returns the topic the Publisher publishes to.
func (p *Publisher) Topic() string { return p.topic }

// Client returns the franz-go client, for what this package does not wrap.
func (p *Publisher) Client() *kgo.Client { return p.cl }

// Publish validates every event, then produces them, in the binding's
// binary content mode (see Record), and waits for the broker's
// acknowledgement of each (acks=all). See events.Publisher for the
// contract. Besides Validate's rules, an event whose datacontenttype is an
// application/cloudevents media type is invalid here: the binding reads such
// a record as structured mode.
//
// When some events are not acknowledged, the error is a *PublishError that
// says which: those that failed (certainly not published) and those whose
// outcome is uncertain. When ctx ends before every event is acknowledged,
// Publish returns at once with a *PublishError matching events.ErrUncertain
// and the context's error, which counts every event of the call as
// uncertain: the events still unacknowledged may be in the log or not (the
// client keeps trying to deliver those it has sent). Events the client
// failed without sending are reported as failed, and all of them are not
// published when ctx had ended before Publish was called (its error, never
// ErrUncertain). An event that carries no traceparent gets the trace context
// of ctx.
//
// Publish keeps no reference to the events' Data: the client resends a copy,
// so the caller may reuse the buffers once Publish returns, even with
// ErrUncertain while the client still tries to deliver them.
func (p *Publisher) Publish(ctx context.Context, evs ...events.Event) error {
	for i := range evs {
		err := evs[i].Validate()
		if err == nil && structured(evs[i].DataContentType) {
			// Its record would be in structured mode, and read back as
			// an envelope.
			err = &events.ValidationError{Attribute: "datacontenttype",
				Reason: "an application/cloudevents media type makes a Kafka record structured mode; binary mode cannot carry it"}
		}
		if err != nil {
			return fmt.Errorf("kafka: event %d (id %q): %w", i, evs[i].ID, err)
		}
	}
	if len(evs) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		// Nothing was handed to the client: certainly not published.
		return fmt.Errorf("kafka: %d events not published: %w", len(evs), context.Cause(ctx))
	}
	// The client reads a record's value again whenever it resends it,
	// which for a record in flight can be after Publish returned (ctx
	// ended): the values are copies, so that a caller may reuse its
	// events' Data once Publish returns, whatever it returned. One
	// allocation holds them all.
	var n int
	for i := range evs {
		n += len(evs[i].Data)
	}
	data := make([]byte, 0, n)
	records := make([]*kgo.Record, len(evs))
	for i := range evs {
		e := evs[i]
		events.InjectTrace(ctx, p.trace, &e) // gives e its own Extensions map before writing
		if e.Data != nil {
			data = append(data, e.Data...)
			e.Data = data[len(data)-len(e.Data) : len(data) : len(data)]
		}
		records[i] = Record(p.topic, e)
	}
	// ProduceSync ends the client's linger for these partitions, so a
	// synchronous Publish does not wait for it. It returns only when every
	// record is acknowledged or failed, which for a record in flight can
	// take until the broker answers; Publish itself returns when ctx ends.
	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		return events.ErrClosed
	}
	p.inflight.Add(1)
	p.mu.RUnlock()
	done := make(chan kgo.ProduceResults, 1)
	go func() {
		defer p.inflight.Done()
		done <- p.produce(ctx, records)
	}()
	select {
	case results := <-done:
		return outcome(records, results)
	case <-ctx.Done():
		select {
		case results := <-done: // resolved as ctx ended: the outcome is known
			return outcome(records, results)
		default:
		}
		// Which were acknowledged is not known yet: all are uncertain.
		pe := &PublishError{N: len(evs), Uncertain: make([]int, len(evs)), Cause: context.Cause(ctx)}
		for i := range pe.Uncertain {
			pe.Uncertain[i] = i
		}
		return pe
	}
}

// PublishError is the error of a Publish call some of whose events were not
// acknowledged, and says which, by their index among the call's events:
// Failed were certainly not published (the client refused them, or the
// broker did, for good), Uncertain may be in the log or not (the context
// ended, or the client closed, while they were in flight). The other events
// of the call were acknowledged. It matches events.ErrUncertain when
// Uncertain is not empty, and wraps the first failure's error and the
// context's.
//
// Publishing the failed and uncertain events again, in their order, is the
// way to recover. An event that failed does not hold back the later events
// of its key in the same call: those may be in the log already, ahead of
// the failed event's next try.
type PublishError struct {
	Failed    []int
	Uncertain []int
	N         int   // the number of events of the call
	Err       error // the error of the first event in Failed; nil when none failed
	Cause     error // why the uncertain events are: the context's cause, or kgo.ErrClientClosed
}

func (e *PublishError) Error() string {
	var s string
	switch {
	case len(e.Uncertain) > 0 && e.Cause == kgo.ErrClientClosed:
		s = fmt.Sprintf("kafka: %d of %d events unacknowledged when the client closed (%s)", len(e.Uncertain), e.N, events.ErrUncertain)
	case len(e.Uncertain) > 0:
		s = fmt.Sprintf("kafka: %d of %d events not all acknowledged when the context ended (%s): %v", len(e.Uncertain), e.N, events.ErrUncertain, e.Cause)
	}
	if len(e.Failed) > 0 {
		if s != "" {
			s += "; "
		} else {
			s = "kafka: "
		}
		s += fmt.Sprintf("%d of %d events not published: %v", len(e.Failed), e.N, e.Err)
	}
	return s
}

// Unwrap returns events.ErrUncertain and the cause when events are
// uncertain, and the first failure's error.
func (e *PublishError) Unwrap() []error {
	var errs []error
	if len(e.Uncertain) > 0 {
		errs = append(errs, events.ErrUncertain, e.Cause)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// produce produces records and returns their results. franz-go fails a
// batch not yet sent when the context of its first record ends, with the
// records of other Publish calls that joined the batch: those, failed with
// a context error while this call's ctx lives, were never sent, and are
// produced again, in the call's order (the client failed every record of
// their partition after them too), until none is or ctx ends.
func (p *Publisher) produce(ctx context.Context, records []*kgo.Record) kgo.ProduceResults {
	results := p.cl.ProduceSync(ctx, records...)
	var index map[*kgo.Record]int
	for ctx.Err() == nil {
		var again []*kgo.Record
		kept := results[:0:0]
		for _, r := range results {
			if errors.Is(r.Err, context.Canceled) || errors.Is(r.Err, context.DeadlineExceeded) {
				again = append(again, r.Record)
			} else {
				kept = append(kept, r)
			}
		}
		if len(again) == 0 {
			break
		}
		if index == nil {
			index = make(map[*kgo.Record]int, len(records))
			for i, r := range records {
				index[r] = i
			}
		}
		slices.SortFunc(again, func(a, b *kgo.Record) int { return index[a] - index[b] })
		results = append(kept, p.cl.ProduceSync(ctx, again...)...)
	}
	return results
}

// outcome turns the results of one Publish call's records into its error.
// The results come in the order the client resolved the records, not the
// call's: records[i] is event i's.
func outcome(records []*kgo.Record, results kgo.ProduceResults) error {
	var pe *PublishError
	var index map[*kgo.Record]int
	for _, r := range results {
		if r.Err == nil {
			continue
		}
		if pe == nil {
			pe = &PublishError{N: len(records)}
			index = make(map[*kgo.Record]int, len(records))
			for i, x := range records {
				index[x] = i
			}
		}
		i := index[r.Record]
		if errors.Is(r.Err, kgo.ErrClientClosed) {
			// Records in flight when the client closed may have been
			// written.
			pe.Uncertain = append(pe.Uncertain, i)
			pe.Cause = kgo.ErrClientClosed
			continue
		}
		pe.Failed = append(pe.Failed, i)
	}
	if pe == nil {
		return nil
	}
	slices.Sort(pe.Failed)
	slices.Sort(pe.Uncertain)
	if len(pe.Failed) > 0 {
		first := records[pe.Failed[0]]
		for _, r := range results {
			if r.Record == first {
				pe.Err = r.Err
			}
		}
	}
	return pe
}

// Close waits up to CloseTimeout for records in flight, then closes the
// client if the Publisher made it, and waits (within the same timeout) for
// the goroutines of Publish calls that returned early. Later Publish calls return
// events.ErrClosed. Close is idempotent.
func (p *Publisher) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), p.close)
	defer cancel()
	err := p.cl.Flush(ctx)
	if p.owned {
		p.cl.Close() // fails what is left, so every ProduceSync returns
	}
	waited := make(chan struct{})
	go func() { p.inflight.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-ctx.Done():
		// A caller's client still holds records a broker has not
		// answered; their goroutines end when it does.
	}
	if err != nil {
		return fmt.Errorf("kafka: flushing on close: %w", err)
	}
	return nil
}
