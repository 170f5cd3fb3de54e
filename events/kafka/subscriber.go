package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/retry"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Headers the subscriber adds to a dead-lettered record, besides
// ce_deadletterreason and ce_deadletterattempts.
const (
	HeaderDLQTopic     = "dlq-topic"
	HeaderDLQPartition = "dlq-partition"
	HeaderDLQOffset    = "dlq-offset"
	HeaderDLQGroup     = "dlq-group"
	// HeaderDLQDropped is on a dead letter that the dead-letter topic
	// refused as too large whole: "value" when it lacks the record's
	// value, "value,headers" when it lacks its headers too,
	// "value,headers,key" when it lacks its key as well. The record
	// stays in its topic at the offset dlq-offset names, until the topic's
	// retention.
	HeaderDLQDropped = "dlq-dropped"
)

// DefaultDeadLetterSuffix names a topic's dead-letter topic when
// SubscriberConfig.DeadLetterTopic is empty.
const DefaultDeadLetterSuffix = ".dlq"

// SubscriberConfig configures a Subscriber. Brokers and Group are required;
// every other zero field means the default.
type SubscriberConfig struct {
	// Brokers are the seed brokers.
	Brokers []string
	// Group is the consumer group: the instances of one service share it,
	// and each partition is consumed by one of them at a time.
	Group string
	// ClientOpts are added to the options of each Subscribe call's client
	// (TLS, SASL, session timeout...). Options that change how offsets are
	// committed (autocommit, the balancer) must not be given. The client
	// also produces the dead letters, and a record is committed once its
	// dead letter is acknowledged: Subscribe refuses, with an error
	// matching ErrWeakDurability, options weaker than the idempotent
	// producer with acks=all (see CheckDurability).
	ClientOpts []kgo.Opt
	// Retrier retries a failing handler in place, so the partition's order
	// is kept. nil means the retry package's default policy (4 attempts,
	// at most 30s). Keep its MaxElapsedTime under the group's rebalance
	// timeout (60s by default): a rebalance waits for the batch in hand.
	// Tries that fail with an events.Unavailable error are not its
	// attempts: they are retried within the attempt, until the dependency
	// is back (see Subscriber); only the time they take after the event's
	// first failure of its own counts towards MaxElapsedTime.
	Retrier *retry.Retrier
	// DeadLetterTopic receives the records whose handler failed after the
	// retries, or that could not be decoded; "" means the subscribed topic
	// plus DefaultDeadLetterSuffix. The topic must exist, and must not be
	// the subscribed topic: Subscribe returns an error matching ErrConfig
	// when it is, or when the cluster says it does not exist.
	DeadLetterTopic string
	// MaxPollRecords bounds the records handled between two commits; zero
	// means 500.
	MaxPollRecords int
	// CommitTimeout bounds each offset commit; zero means 10s.
	CommitTimeout time.Duration
	// Logger receives dead-letters, commit failures and the start and end
	// of each outage of a dependency; nil means none.
	Logger *slog.Logger
	// Batch, when set, wraps the handling of each partition's records of
	// a poll as one batch, inside the retries and dead-lettering: Begin
	// before the first record, Handle for each attempt at each event, End
	// before the commit (see events.BatchMiddleware). A *dedupe.Deduper
	// there claims and finishes a batch's events in two round trips to its
	// store instead of two per event; do not also wrap the handler with
	// its per-event Middleware.
	Batch events.BatchMiddleware
}

// Subscriber consumes a topic in a consumer group and hands each event to a
// handler. It implements events.Subscriber.
//
// Each Subscribe call makes its own franz-go client, joined to the group with
// the cooperative-sticky balancer, and closes it (leaving the group) when it
// returns. It polls a batch of records, handles each partition's records in
// order on a goroutine of its own (partitions concurrently), waits for the
// batch, commits the offset after the last record handled on each partition,
// and only then lets a rebalance proceed (BlockRebalanceOnPoll), so an offset
// is never committed for a record whose handler has not succeeded, nor for a
// partition the instance no longer owns.
//
// A handler error is retried in place with the Retrier, so the events after
// it on the partition wait (order is kept); so is one wrapping a context
// error while ctx lives on (a call of the handler's own timed out, the
// dedupe lease ran out). The next poll waits for the whole batch, so the
// other partitions this instance owns wait too, once their records of the
// batch are handled, until the retries end (at most the Retrier's
// MaxElapsedTime, 30s by default) and the dead letter is written: keep
// that time short where one failing record must not delay the others. When the retries are spent, or the error is
// events.Permanent, or the handler panicked, or the record is not a
// CloudEvent, the record is copied to the dead-letter topic with its key,
// value and headers plus the reason (ce_deadletterreason), the attempts
// (ce_deadletterattempts) and where it came from (dlq-* headers), and
// consumption moves on. A dead letter the dead-letter topic refuses as too
// large is sent without the record's value, then without its headers, then
// without its key (HeaderDLQDropped says which), rather than block the
// partition.
// Publishing the dead letter is retried until it succeeds or ctx ends; a
// consumer never skips a record it has not handled or dead-lettered.
//
// A handler error marked events.Unavailable (a dependency is down: every
// error of the dedupe store is marked so) is not the event's failure, and
// keeps the events.Subscriber rule: the record is tried again in place,
// backing off up to 5s between tries, until the error clears or ctx ends,
// whatever Permanent marker it carries. Those tries are not attempts of the
// event: they are not counted against the Retrier's attempt limit or budget,
// nor in ce_deadletterattempts if the event later fails on its own, and they
// never dead-letter it. The partition waits meanwhile, in order, as do a
// batch's Begin and End (see below). The first record to wait for a
// dependency logs a warning and the last one to get past it logs that it is
// back, however many records and tries wait in between. A rebalance waits
// too; one that waits past the group's rebalance timeout may go on without
// this instance, whose uncommitted records are then delivered again to the
// partitions' new owners (dedupe absorbs the repeats).
//
// With SubscriberConfig.Batch set, each partition's records of a poll are
// one batch: Begin before the first, Handle (inside the retries) for each
// event, End before the commit; a record not committed because End never
// succeeded is delivered again, like one whose handler had not succeeded.
//
// When ctx ends, handlers see their ctx end; records whose handler had not
// returned nil are not committed and are delivered again, to this group's
// next owner of the partition.
type Subscriber struct {
	cfg     SubscriberConfig
	retrier *retry.Retrier
	log     *slog.Logger
}

var _ events.Subscriber = (*Subscriber)(nil)

// NewSubscriber checks cfg. It makes no connection; Subscribe does.
func NewSubscriber(cfg SubscriberConfig) (*Subscriber, error) {
	switch {
	case len(cfg.Brokers) == 0:
		return nil, fmt.Errorf("%w: Brokers is empty", ErrConfig)
	case cfg.Group == "":
		return nil, fmt.Errorf("%w: Group is empty", ErrConfig)
	case cfg.MaxPollRecords < 0:
		return nil, fmt.Errorf("%w: negative MaxPollRecords", ErrConfig)
	case cfg.CommitTimeout < 0:
		return nil, fmt.Errorf("%w: negative CommitTimeout", ErrConfig)
	}
	if cfg.MaxPollRecords == 0 {
		cfg.MaxPollRecords = 500
	}
	if cfg.CommitTimeout == 0 {
		cfg.CommitTimeout = 10 * time.Second
	}
	s := &Subscriber{cfg: cfg, retrier: cfg.Retrier, log: cfg.Logger}
	if s.retrier == nil {
		r, err := retry.New(retry.Policy{})
		if err != nil {
			return nil, err
		}
		s.retrier = r
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// patience is the backoff of what the subscriber retries until it succeeds
// or ctx ends: up to 5s between tries, with no attempt or time limit.
var patience = retry.Policy{MaxAttempts: -1, MaxElapsedTime: -1, MaxInterval: 5 * time.Second}

// untilDone calls fn until it succeeds or ctx ends, backing off as patience
// says, whatever fn's error: what the subscriber retries this way (a dead
// letter, a batch's Begin and End) must not be given up while the consumer
// goes on, or the consumer would move past records it never handled, and
// later commits would skip them for good. So neither the retry package's
// classifier (which calls a wrapped context.DeadlineExceeded from a per-call
// timeout, or an inner loop's *retry.Error, final) nor an error marked
// Permanent stops it; only ctx does.
func untilDone(ctx context.Context, fn func(context.Context) error) error {
	p := patience
	p.Retryable = func(error) bool { return true }
	return retry.Do(ctx, p, func(ctx context.Context) error {
		if err := fn(ctx); err != nil {
			return retryAlways{err}
		}
		return nil
	})
}

// retryAlways hides its error's chain (Permanent markers, context errors)
// from the retry loop.
type retryAlways struct{ err error }

func (e retryAlways) Error() string { return e.err.Error() }

// untilAvailable calls fn until it returns nil or an error that is not
// events.Unavailable, or until ctx ends, backing off as patience says, and
// returns fn's last error. Called within one attempt of attempt's retry
// loop, its tries make that one attempt of the event.
func (c *consumer) untilAvailable(ctx context.Context, fn func(context.Context) error) error {
	err := fn(ctx)
	if !events.IsUnavailable(err) {
		return err
	}
	o := outageLog{c: c}
	b, berr := retry.NewBackoff(patience, nil)
	if berr != nil {
		return err // unreachable: patience is valid
	}
	for events.IsUnavailable(err) {
		o.unavailable(ctx, err)
		if sleep(ctx, b.NextBackOff()) != nil {
			break
		}
		err = fn(ctx)
	}
	o.end(ctx, !events.IsUnavailable(err))
	return err
}

// outageLog logs one retry loop's waits for an unavailable dependency,
// sharing a count with the consumer's other loops, so that an outage logs
// a warning when the first loop meets it and a message when the last loop
// gets past it, however many loops and tries wait in between.
type outageLog struct {
	c     *consumer
	in    bool // counted in c.waiting
	tries int
	start time.Time
}

// unavailable records a try that failed with err, an Unavailable error.
func (o *outageLog) unavailable(ctx context.Context, err error) {
	o.tries++
	if o.in {
		return
	}
	o.in, o.start = true, time.Now()
	if o.c.waiting.Add(1) == 1 {
		o.c.s.log.LogAttrs(ctx, slog.LevelWarn, "kafka: a dependency is unavailable; retrying in place until it is back",
			slog.Any("error", err))
	}
}

// end records that the loop ended: cleared, or because ctx ended.
func (o *outageLog) end(ctx context.Context, cleared bool) {
	if !o.in {
		return
	}
	o.in = false
	if o.c.waiting.Add(-1) == 0 && cleared {
		o.c.s.log.LogAttrs(ctx, slog.LevelInfo, "kafka: the unavailable dependency is back",
			slog.Int("tries", o.tries), slog.Duration("waited", time.Since(o.start)))
	}
}

// sleep waits for d or until ctx ends, and returns ctx's error if it ended.
func sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Subscribe consumes topic in the group until ctx ends, then commits what was
// handled, leaves the group and returns nil. It returns an error when the
// client cannot be made, when its producer settings are weaker than
// CheckDurability allows (ErrWeakDurability), or at once when the cluster
// says the dead-letter topic does not exist (ErrConfig), rather than at the
// first record to need it, which would hold the consumer until it did.
func (s *Subscriber) Subscribe(ctx context.Context, topic string, h events.Handler) error {
	if topic == "" {
		return fmt.Errorf("%w: empty topic", ErrConfig)
	}
	dlq := s.cfg.DeadLetterTopic
	if dlq == "" {
		dlq = topic + DefaultDeadLetterSuffix
	}
	if dlq == topic {
		// Every dead letter would be read back, fail again and be
		// written again, for ever.
		return fmt.Errorf("%w: topic %q is its own dead-letter topic", ErrConfig, topic)
	}
	opts := append([]kgo.Opt{
		kgo.SeedBrokers(s.cfg.Brokers...),
		kgo.ConsumerGroup(s.cfg.Group),
		kgo.ConsumeTopics(topic),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	}, s.cfg.ClientOpts...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return fmt.Errorf("kafka: new consumer client: %w", err)
	}
	// A record is committed once its dead letter is acknowledged; an
	// acknowledgement weaker than acks=all could lose the only copy.
	if err := CheckDurability(cl); err != nil {
		cl.Close()
		return fmt.Errorf("kafka: consumer client, which produces the dead letters: %w", err)
	}
	defer cl.Close() // leaves the group
	if err := s.checkDeadLetterTopic(ctx, cl, dlq); err != nil {
		return err
	}
	c := &consumer{s: s, cl: cl, h: h, dlq: dlq}
	for {
		fetches := cl.PollRecords(ctx, s.cfg.MaxPollRecords)
		if ctx.Err() != nil {
			cl.AllowRebalance()
			return nil
		}
		if fetches.IsClientClosed() {
			return events.ErrClosed
		}
		fetches.EachError(func(t string, p int32, err error) {
			s.log.LogAttrs(ctx, slog.LevelWarn, "kafka: fetch error", slog.String("topic", t), slog.Int("partition", int(p)), slog.Any("error", err))
		})
		var done []*kgo.Record
		var mu sync.Mutex
		var wg sync.WaitGroup
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			if len(p.Records) == 0 {
				return
			}
			wg.Go(func() {
				var last *kgo.Record
				if s.cfg.Batch != nil {
					last = c.handleBatch(ctx, p.Records)
				} else {
					for _, r := range p.Records {
						if !c.handle(ctx, r) {
							break
						}
						last = r
					}
				}
				if last != nil {
					mu.Lock()
					done = append(done, last)
					mu.Unlock()
				}
			})
		})
		wg.Wait()
		c.commit(ctx, done)
		cl.AllowRebalance()
	}
}

// checkDeadLetterTopic returns an error matching ErrConfig when the cluster
// says that dlq does not exist: nothing could be dead-lettered, and the
// first record to need it would hold the consumer until the topic is made.
// Not being able to ask is no error (the consumer would wait for the
// cluster anyway); it is logged.
func (s *Subscriber) checkDeadLetterTopic(ctx context.Context, cl *kgo.Client, dlq string) error {
	details, err := kadm.NewClient(cl).ListTopics(ctx, dlq)
	if err == nil {
		err = details[dlq].Err
		if _, ok := details[dlq]; !ok {
			err = kerr.UnknownTopicOrPartition
		}
	}
	switch {
	case err == nil, ctx.Err() != nil:
		return nil
	case errors.Is(err, kerr.UnknownTopicOrPartition):
		return fmt.Errorf("%w: the dead-letter topic %q does not exist", ErrConfig, dlq)
	}
	s.log.LogAttrs(ctx, slog.LevelWarn, "kafka: cannot tell whether the dead-letter topic exists", slog.String("dlq", dlq), slog.Any("error", err))
	return nil
}

type consumer struct {
	s       *Subscriber
	cl      *kgo.Client
	h       events.Handler
	dlq     string
	waiting atomic.Int32 // retry loops waiting for an unavailable dependency
}

// commit commits the offsets after done, even when ctx has ended: what was
// handled before a shutdown should not be handled again.
func (c *consumer) commit(ctx context.Context, done []*kgo.Record) {
	if len(done) == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.s.cfg.CommitTimeout)
	defer cancel()
	if err := c.cl.CommitRecords(cctx, done...); err != nil {
		// The records will be delivered again (to whoever owns the
		// partition now); dedupe absorbs the repeat.
		c.s.log.LogAttrs(ctx, slog.LevelWarn, "kafka: commit failed; records will be redelivered", slog.Any("error", err))
	}
}

// handle runs the handler on r with retries, or dead-letters r, and reports
// whether r may be committed.
func (c *consumer) handle(ctx context.Context, r *kgo.Record) bool {
	e, err := Decode(r)
	if err != nil {
		return c.deadLetter(ctx, r, err, 0)
	}
	return c.attempt(ctx, r, func(ctx context.Context) error { return call(ctx, c.h, e) })
}

// attempt runs fn with retries, or dead-letters r, and reports whether r
// may be committed. Tries that fail with an Unavailable error are repeated
// within one attempt until the error clears, so they are neither counted
// nor dead-lettered; when ctx ends during them, r is not committed.
func (c *consumer) attempt(ctx context.Context, r *kgo.Record, fn func(context.Context) error) bool {
	attempts := 0
	err := c.s.retrier.Do(ctx, func(ctx context.Context) error {
		attempts++
		return c.untilAvailable(ctx, fn)
	})
	if err == nil {
		return true
	}
	if ctx.Err() != nil {
		return false // stopped, not failed: redelivered later
	}
	return c.deadLetter(ctx, r, err, attempts)
}

// handleBatch handles one partition's records of a poll through the
// configured BatchMiddleware and returns the last record that may be
// committed (nil for none). Records that are not CloudEvents are
// dead-lettered in their place and are not part of the batch. Begin is
// retried until it succeeds or ctx ends; End is called once even when ctx
// has ended (it bounds itself), then retried until it succeeds or ctx ends,
// and when it never succeeds nothing of the batch is committed.
func (c *consumer) handleBatch(ctx context.Context, rs []*kgo.Record) *kgo.Record {
	es := make([]events.Event, 0, len(rs))
	var malformed []error // each record's decoding error; nil when none is malformed
	for j, r := range rs {
		e, err := Decode(r)
		if err != nil {
			if malformed == nil {
				malformed = make([]error, len(rs))
			}
			malformed[j] = err
			continue
		}
		es = append(es, e)
	}
	var b events.Batch
	if len(es) > 0 {
		o := outageLog{c: c}
		err := untilDone(ctx, func(ctx context.Context) error {
			var err error
			b, err = c.s.cfg.Batch.Begin(ctx, es)
			c.batchFailed(ctx, &o, "kafka: beginning a batch failed; retrying", err)
			return err
		})
		o.end(ctx, err == nil)
		if err != nil {
			return nil // ctx ended; nothing was handled
		}
	}
	next := func(ctx context.Context, e events.Event) error { return call(ctx, c.h, e) }
	var last *kgo.Record
	i := 0 // the event index of the next record that decoded
	for j, r := range rs {
		var ok bool
		if malformed != nil && malformed[j] != nil {
			ok = c.deadLetter(ctx, r, malformed[j], 0)
		} else {
			ok = c.attempt(ctx, r, func(ctx context.Context) error { return b.Handle(ctx, i, next) })
			i++
		}
		if !ok {
			break
		}
		last = r
	}
	if b == nil {
		return last
	}
	err := b.End(ctx)
	if err != nil && ctx.Err() == nil {
		o := outageLog{c: c}
		err = untilDone(ctx, func(ctx context.Context) error {
			c.batchFailed(ctx, &o, "kafka: ending a batch failed; retrying", err)
			err = b.End(ctx)
			return err
		})
		o.end(ctx, err == nil)
	}
	if err != nil {
		c.s.log.LogAttrs(ctx, slog.LevelWarn, "kafka: ending a batch failed; its records will be redelivered", slog.Any("error", err))
		return nil
	}
	return last
}

// batchFailed logs a failed Begin or End that will be retried: as part of
// an outage when err is Unavailable, else each time.
func (c *consumer) batchFailed(ctx context.Context, o *outageLog, msg string, err error) {
	switch {
	case err == nil:
	case events.IsUnavailable(err):
		o.unavailable(ctx, err)
	default:
		c.s.log.LogAttrs(ctx, slog.LevelWarn, msg, slog.Any("error", err))
	}
}

// call runs h, turning a panic into a permanent error.
func call(ctx context.Context, h events.Handler, e events.Event) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = events.Permanent(&events.PanicError{Value: v, Stack: debug.Stack()})
		}
	}()
	return h(ctx, e)
}

// DeadLetterRecord returns the dead-letter copy of r for topic dlq: r's key,
// value and headers, with the reason and attempts as ce_deadletterreason and
// ce_deadletterattempts (replacing any from an earlier dead-lettering), and
// r's topic, partition, offset and the group as dlq-* headers. Its timestamp
// is left for the client to stamp when it is produced, so that the
// dead-letter topic's retention counts from the dead-lettering, not from
// when r was written, which for a consumer that fell behind may be nearly
// the retention ago.
func DeadLetterRecord(dlq, group string, r *kgo.Record, cause error, attempts int) *kgo.Record {
	replaced := map[string]bool{
		HeaderPrefix + events.ExtDeadLetterReason: true, HeaderPrefix + events.ExtDeadLetterAttempts: true,
		HeaderDLQTopic: true, HeaderDLQPartition: true, HeaderDLQOffset: true, HeaderDLQGroup: true,
	}
	h := make([]kgo.RecordHeader, 0, len(r.Headers)+6)
	for _, x := range r.Headers {
		if !replaced[x.Key] {
			h = append(h, x)
		}
	}
	add := func(k, v string) { h = append(h, kgo.RecordHeader{Key: k, Value: []byte(v)}) }
	add(HeaderPrefix+events.ExtDeadLetterReason, events.Reason(cause))
	add(HeaderPrefix+events.ExtDeadLetterAttempts, strconv.Itoa(attempts))
	add(HeaderDLQTopic, r.Topic)
	add(HeaderDLQPartition, strconv.Itoa(int(r.Partition)))
	add(HeaderDLQOffset, strconv.FormatInt(r.Offset, 10))
	add(HeaderDLQGroup, group)
	return &kgo.Record{Topic: dlq, Key: r.Key, Value: r.Value, Headers: h}
}

// shrink drops from dead letter d, which the dead-letter topic refused as
// too large, the record's value, or once it has none the record's own
// headers, or once it has none of those either its key, and reports whether
// it dropped anything.
func shrink(d *kgo.Record) bool {
	if d.Value != nil {
		d.Value = nil
		d.Headers = append(d.Headers, kgo.RecordHeader{Key: HeaderDLQDropped, Value: []byte("value")})
		return true
	}
	// DeadLetterRecord put the record's own headers first (none of them
	// the reason), then its own six starting with the reason.
	for i, h := range d.Headers {
		if h.Key != HeaderPrefix+events.ExtDeadLetterReason {
			continue
		}
		if i == 0 {
			if d.Key == nil {
				return false
			}
			d.Key = nil
			kept := make([]kgo.RecordHeader, 0, 7)
			for _, h := range d.Headers {
				if h.Key != HeaderDLQDropped {
					kept = append(kept, h)
				}
			}
			d.Headers = append(kept, kgo.RecordHeader{Key: HeaderDLQDropped, Value: []byte("value,headers,key")})
			return true
		}
		kept := make([]kgo.RecordHeader, 0, 7)
		for _, h := range d.Headers[i:] {
			if h.Key != HeaderDLQDropped {
				kept = append(kept, h)
			}
		}
		d.Headers = append(kept, kgo.RecordHeader{Key: HeaderDLQDropped, Value: []byte("value,headers")})
		return true
	}
	return false
}

// deadLetter publishes r's dead letter, retrying until it succeeds or ctx
// ends, and reports whether it succeeded.
func (c *consumer) deadLetter(ctx context.Context, r *kgo.Record, cause error, attempts int) bool {
	if errors.Is(cause, ErrMalformed) {
		cause = fmt.Errorf("malformed: %w", cause)
	}
	d := DeadLetterRecord(c.dlq, c.s.cfg.Group, r, cause, attempts)
	err := untilDone(ctx, func(ctx context.Context) error {
		err := produce(ctx, c.cl, d)
		if errors.Is(err, kerr.MessageTooLarge) && shrink(d) {
			// Refused however often it is sent: a record as large as the
			// topic takes, plus the dead letter's headers. Send less
			// rather than block the partition for good.
			err = produce(ctx, c.cl, d)
		}
		if err != nil {
			c.s.log.LogAttrs(ctx, slog.LevelWarn, "kafka: dead-lettering failed; retrying",
				slog.String("dlq", c.dlq), slog.Any("error", err))
		}
		return err
	})
	if err != nil {
		return false
	}
	c.s.log.LogAttrs(ctx, slog.LevelWarn, "kafka: record dead-lettered",
		slog.String("topic", r.Topic), slog.Int("partition", int(r.Partition)), slog.Int64("offset", r.Offset),
		slog.String("dlq", c.dlq), slog.Int("attempts", attempts), slog.Any("reason", cause))
	return true
}

// produce produces r and waits for the broker's answer or for ctx to end,
// whichever comes first. Unlike ProduceSync it returns when ctx ends even if
// r is in flight (the idempotent producer does not give up a record it sent
// until the broker answers, which a broker that holds the request never
// does); the record's outcome then stays unknown, and the client's Close
// resolves it.
func produce(ctx context.Context, cl *kgo.Client, r *kgo.Record) error {
	res := make(chan error, 1) // the promise never blocks, even after we stop waiting
	cl.Produce(ctx, r, func(_ *kgo.Record, err error) { res <- err })
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		select {
		case err := <-res: // answered as ctx ended: the answer is known
			return err
		default:
			return fmt.Errorf("dead letter not acknowledged when the context ended: %w", context.Cause(ctx))
		}
	}
}
