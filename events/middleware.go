package events

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/activekit/activekit/retry"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Permanent marks a handler error as not worth retrying: the Retry
// middleware and the adapters that retry in place stop at once and go on to
// dead-lettering. Permanent(nil) is nil. An error that is also Unavailable
// is Unavailable: it is retried until it clears, never dead-lettered.
func Permanent(err error) error { return retry.Permanent(err) }

// Attempts returns how many times a handler ran before returning err: the
// count a retry loop recorded in err, else 1.
func Attempts(err error) int {
	var re *retry.Error
	if errors.As(err, &re) && re.Attempts > 0 {
		return re.Attempts
	}
	return 1
}

// Retry retries a failing handler in place with r's policy, budget and
// clock, so events with the same key stay in order. A nil r means the retry
// package's default policy. An error marked Permanent, or one that an inner
// retry loop already gave up on, is not retried; one wrapping a context
// error while ctx lives on (a call of the handler's own timed out) is, as
// the retry package's classifier does. When Retry gives up, its
// error is a *retry.Error that says how many attempts were made (see
// Attempts).
//
// An Unavailable error is retried within the attempt that got it, until it
// clears or ctx ends, whatever Permanent markers it carries: those tries
// wait by r's intervals and jitter (on the system clock), but are not
// attempts, so r's attempt limit and budget do not end them. Time spent in
// them after the first failed attempt does count towards r's
// MaxElapsedTime. When ctx ends first, the error Retry returns is still
// Unavailable, so a DeadLetter outside it does not dead-letter the event.
//
// Use Retry with subscribers that do not retry themselves; the Kafka
// subscriber already retries in place, and retrying in two layers multiplies
// attempts (the retry package refuses to, by treating an exhausted inner loop
// as final).
func Retry(r *retry.Retrier) Middleware {
	if r == nil {
		r, _ = retry.New(retry.Policy{}) // the zero policy is valid
	}
	p := r.Policy()
	return func(next Handler) Handler {
		return func(ctx context.Context, e Event) error {
			return r.Do(ctx, func(ctx context.Context) error {
				return whileUnavailable(ctx, p, func(ctx context.Context) error { return next(ctx, e) })
			})
		}
	}
}

// MaxReasonLen bounds the dead-letter reason, so one huge error cannot make
// the dead-letter event too large to publish.
const MaxReasonLen = 1024

// DeadLetter publishes an event whose handler failed to dlq and then
// reports success, so the subscriber moves on. Put it outside Retry:
// Chain(h, DeadLetter(dlq), Retry(r)) dead-letters once the retries are spent.
//
// The dead-lettered copy keeps the event's ID and attributes and adds the
// extensions deadletterreason (the error, at most MaxReasonLen bytes) and
// deadletterattempts. When ctx has ended, or its deadline has passed (the
// context's timer may not have fired yet), the event is not dead-lettered
// (the handler was stopped, not failed) and the error is returned. So it is
// when a retry loop inside stopped because its next attempt would start
// after ctx's deadline (retry.ErrDeadline; behind dedupe, the handler's ctx
// ends before the claim's lease): the retries were cut short, not spent. When
// publishing to dlq fails, the handler's error and the publish error are
// returned, so the event is delivered again.
//
// An Unavailable error (see Unavailable) is returned, never dead-lettered:
// a dependency was down, not the event at fault. The subscriber delivers
// the event again; one that follows the Subscriber rule retries it in place
// until it clears.
func DeadLetter(dlq Publisher) Middleware {
	return func(next Handler) Handler {
		return func(ctx context.Context, e Event) error {
			err := next(ctx, e)
			if err == nil || ended(ctx) || cutShort(err) || IsUnavailable(err) {
				return err
			}
			d := e.Clone()
			d.SetExtension(ExtDeadLetterReason, Reason(err))
			d.SetExtension(ExtDeadLetterAttempts, strconv.Itoa(Attempts(err)))
			if perr := dlq.Publish(ctx, d); perr != nil {
				return errors.Join(err, fmt.Errorf("dead-lettering event %s: %w", e.ID, perr))
			}
			return nil
		}
	}
}

// cutShort reports whether err is from a retry loop (the outermost in its
// chain: Retry's, when it is inside DeadLetter) that stopped because its
// next attempt would start after its ctx's deadline. An inner loop's
// ErrDeadline, given up on by an outer one, is not.
func cutShort(err error) bool {
	var re *retry.Error
	return errors.As(err, &re) && re.Stop == retry.ErrDeadline
}

// ended reports whether ctx has ended or its deadline has passed: the
// context's timer runs a moment after the deadline, and a handler stopped
// by the deadline can return before it has.
func ended(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// Reason turns err into a dead-letter reason: its message with control
// characters replaced by spaces, at most MaxReasonLen bytes, never empty.
func Reason(err error) string {
	s := "unknown error"
	if err != nil && err.Error() != "" {
		s = err.Error()
	}
	s = strings.ToValidUTF8(s, "?")
	s = strings.Map(func(r rune) rune {
		if r <= 0x1f || (r >= 0x7f && r <= 0x9f) || (r >= 0xfdd0 && r <= 0xfdef) || r&0xfffe == 0xfffe {
			return ' '
		}
		return r
	}, s)
	if len(s) > MaxReasonLen {
		cut := MaxReasonLen
		for cut > 0 && !isRuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}

func isRuneStart(b byte) bool { return b&0xc0 != 0x80 }

// PanicError is a handler panic turned into an error by Recover.
type PanicError struct {
	Value any    // the value passed to panic
	Stack []byte // the goroutine's stack at the panic
}

func (e *PanicError) Error() string { return fmt.Sprintf("events: handler panicked: %v", e.Value) }

// Recover turns a panic in the handler into a permanent *PanicError, so one
// bad event cannot crash the consumer: it is dead-lettered instead of
// retried (a panic on the same input is expected to repeat).
func Recover() Middleware {
	return func(next Handler) Handler {
		return func(ctx context.Context, e Event) (err error) {
			defer func() {
				if v := recover(); v != nil {
					err = Permanent(&PanicError{Value: v, Stack: debug.Stack()})
				}
			}()
			return next(ctx, e)
		}
	}
}

// TracingConfig configures Tracing and InjectTrace. The zero value uses the
// otel globals (a no-op unless the application set them) and, when no global
// propagator was set, W3C Trace Context.
type TracingConfig struct {
	TracerProvider trace.TracerProvider
	Propagator     propagation.TextMapPropagator
}

const scopeName = "github.com/activekit/activekit/events"

func (c TracingConfig) propagator() propagation.TextMapPropagator {
	if c.Propagator != nil {
		return c.Propagator
	}
	p := otel.GetTextMapPropagator()
	if len(p.Fields()) == 0 {
		return propagation.TraceContext{}
	}
	return p
}

// Tracing starts a consumer span around the handler, continuing the
// producer's trace from the event's traceparent and tracestate extensions
// (the CloudEvents distributed tracing extension), and records the handler's
// error on it: an exception event and an Error status, whose message is
// Reason's (at most MaxReasonLen bytes).
func Tracing(c TracingConfig) Middleware {
	tp := c.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	tracer := tp.Tracer(scopeName)
	prop := c.propagator()
	return func(next Handler) Handler {
		return func(ctx context.Context, e Event) error {
			ctx = prop.Extract(ctx, ExtensionCarrier{Event: &e})
			ctx, span := tracer.Start(ctx, "process "+e.Type,
				trace.WithSpanKind(trace.SpanKindConsumer),
				trace.WithAttributes(
					attribute.String("messaging.operation.type", "process"),
					attribute.String("messaging.message.id", e.ID),
					attribute.String("cloudevents.event_id", e.ID),
					attribute.String("cloudevents.event_source", e.Source),
					attribute.String("cloudevents.event_type", e.Type),
					attribute.String("cloudevents.event_subject", e.Subject),
				))
			defer span.End()
			err := next(ctx, e)
			if err != nil {
				// As span.RecordError and SetStatus(err.Error()) would,
				// but bounded: an error may quote a whole payload, and
				// one huge span can make its export batch too large
				// for the collector, losing the others with it.
				reason := Reason(err)
				span.AddEvent("exception", trace.WithAttributes(
					attribute.String("exception.type", errorType(err)),
					attribute.String("exception.message", reason),
				))
				span.SetStatus(codes.Error, reason)
			}
			return err
		}
	}
}

// errorType names err's type as span.RecordError does.
func errorType(err error) string {
	t := reflect.TypeOf(err)
	if t.PkgPath() == "" && t.Name() == "" {
		return t.String() // a pointer, or a builtin type
	}
	return t.PkgPath() + "." + t.Name()
}

// InjectTrace writes the trace context of ctx into e's traceparent and
// tracestate extensions, unless e already carries a traceparent (an event
// republished by a relay keeps its producer's trace). Publishers call it.
//
// A tracestate e carries without a traceparent belongs to no trace and is
// dropped. When it writes, it first gives e an Extensions map of its own: e is
// typically a Publisher's copy of its caller's event, which shares the map,
// and the caller's event must not change (nor its map be written by two
// Publish calls of the same event at once).
func InjectTrace(ctx context.Context, c TracingConfig, e *Event) {
	if e.Extensions[ExtTraceParent] != "" || !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	if e.Extensions != nil {
		m := make(map[string]string, len(e.Extensions)+2)
		maps.Copy(m, e.Extensions)
		delete(m, ExtTraceState) // of no trace, without a traceparent
		e.Extensions = m
	}
	c.propagator().Inject(ctx, ExtensionCarrier{Event: e})
}

// ExtensionCarrier is a propagation.TextMapCarrier over an event's
// extensions. Keys are lowercased; a key that is not a valid extension name
// is not set.
type ExtensionCarrier struct{ Event *Event }

// Get returns the extension named key.
func (c ExtensionCarrier) Get(key string) string { return c.Event.Extensions[strings.ToLower(key)] }

// Set sets the extension named key, when key is a valid extension name.
func (c ExtensionCarrier) Set(key, value string) {
	key = strings.ToLower(key)
	if CheckExtensionName(key) == "" {
		c.Event.SetExtension(key, value)
	}
}

// Keys returns the extension names.
func (c ExtensionCarrier) Keys() []string {
	keys := make([]string, 0, len(c.Event.Extensions))
	for k := range c.Event.Extensions {
		keys = append(keys, k)
	}
	return keys
}
