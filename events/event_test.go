package events_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/retry"
	"github.com/google/uuid"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func valid() events.Event {
	return events.Event{ID: "A234-1234-1234", Source: "/mycontext", SpecVersion: "1.0", Type: "com.example.someevent"}
}

func TestNew(t *testing.T) {
	before := time.Now().Add(-time.Second)
	e := events.New("/orders", "com.example.order.created", []byte(`{}`))
	if err := e.Validate(); err != nil {
		t.Fatalf("New gave an invalid event: %v", err)
	}
	id, err := uuid.Parse(e.ID)
	if err != nil || id.Version() != 7 {
		t.Fatalf("ID %q is not a UUIDv7 (err %v)", e.ID, err)
	}
	if e.SpecVersion != "1.0" || e.Time.Before(before) || e.Time.Location() != time.UTC {
		t.Fatalf("New: specversion %q time %v", e.SpecVersion, e.Time)
	}
	// IDs sort by creation time.
	prev := e.ID
	for range 100 {
		id := events.NewID()
		if id <= prev {
			t.Fatalf("NewID %q does not sort after %q", id, prev)
		}
		prev = id
	}
}

func TestKeyCloneExtensions(t *testing.T) {
	e := valid()
	if e.Key() != "" {
		t.Fatalf("Key of an event with no subject: %q", e.Key())
	}
	e.Subject = "order-1"
	if e.Key() != "order-1" {
		t.Fatalf("Key = %q, want the subject", e.Key())
	}
	e.SetExtension(events.ExtPartitionKey, "customer-9")
	if e.Key() != "customer-9" {
		t.Fatalf("Key = %q, want the partition key", e.Key())
	}
	e.Data = []byte("abc")
	c := e.Clone()
	c.SetExtension(events.ExtPartitionKey, "other")
	c.Data[0] = 'X'
	if e.Key() != "customer-9" || string(e.Data) != "abc" {
		t.Fatalf("Clone shares state: key %q data %q", e.Key(), e.Data)
	}
	c.SetExtension(events.ExtPartitionKey, "")
	if _, ok := c.Extensions[events.ExtPartitionKey]; ok {
		t.Fatal("SetExtension with an empty value did not remove the attribute")
	}
}

// TestValidate follows the CloudEvents 1.0 specification's rules, section by
// section (spec.md "Context Attributes" and "Type System").
func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*events.Event)
		attr string // "" means valid
	}{
		{"minimal required attributes", func(*events.Event) {}, ""},
		{"all optional attributes", func(e *events.Event) {
			e.Subject = "mynewfile.jpg"
			e.Time = time.Date(2018, 4, 5, 17, 31, 0, 0, time.UTC)
			e.DataContentType = "application/json; charset=utf-8"
			e.DataSchema = "https://example.com/schema.json"
			e.Extensions = map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "comexampleext1": "value"}
		}, ""},
		// REQUIRED attributes MUST be present and non-empty.
		{"empty id", func(e *events.Event) { e.ID = "" }, "id"},
		{"empty source", func(e *events.Event) { e.Source = "" }, "source"},
		{"empty type", func(e *events.Event) { e.Type = "" }, "type"},
		{"empty specversion", func(e *events.Event) { e.SpecVersion = "" }, "specversion"},
		{"specversion 0.3", func(e *events.Event) { e.SpecVersion = "0.3" }, "specversion"},
		// source: URI-reference.
		{"source absolute URI", func(e *events.Event) { e.Source = "https://github.com/cloudevents" }, ""},
		{"source URN", func(e *events.Event) { e.Source = "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66" }, ""},
		{"source relative", func(e *events.Event) { e.Source = "/cloudevents/spec/pull/123" }, ""},
		{"source application-specific", func(e *events.Event) { e.Source = "1-555-123-4567" }, ""},
		{"source with space", func(e *events.Event) { e.Source = "/my context" }, "source"},
		{"source with bad percent-encoding", func(e *events.Event) { e.Source = "/a%zz" }, "source"},
		{"source with non-ASCII", func(e *events.Event) { e.Source = "/café" }, "source"},
		{"source with backslash", func(e *events.Event) { e.Source = `\x` }, "source"},
		// RFC 3986: one fragment, which holds no '#'; '[' and ']' only
		// around an IP literal host.
		{"source with two '#'", func(e *events.Event) { e.Source = "/a#b#c" }, "source"},
		{"source with '[' in the path", func(e *events.Event) { e.Source = "/a[b]" }, "source"},
		{"source with '[' in the query", func(e *events.Event) { e.Source = "/x?y=[1]" }, "source"},
		{"source with '[' in the fragment", func(e *events.Event) { e.Source = "https://h/p#f[1]" }, "source"},
		{"source with an IPv6 host", func(e *events.Event) { e.Source = "https://[2001:db8::1]:8443/orders" }, ""},
		{"source with an IPv6 host and userinfo", func(e *events.Event) { e.Source = "//u@[::1]/x?q#f" }, ""},
		{"dataschema with two '#'", func(e *events.Event) { e.DataSchema = "https://h/s#a#b" }, "dataschema"},
		// dataschema: URI (absolute).
		{"relative dataschema", func(e *events.Event) { e.DataSchema = "/schema.json" }, "dataschema"},
		// datacontenttype: RFC 2046.
		{"bad datacontenttype", func(e *events.Event) { e.DataContentType = "json" }, "datacontenttype"},
		{"datacontenttype with parameter", func(e *events.Event) { e.DataContentType = "text/plain; charset=us-ascii" }, ""},
		{"datacontenttype with quoted parameter", func(e *events.Event) { e.DataContentType = `application/json; charset="utf-8"` }, ""},
		{"datacontenttype with suffix", func(e *events.Event) { e.DataContentType = "application/vnd.api+json" }, ""},
		// A media range (RFC 9110 section 12.5.1) says what a receiver
		// accepts, not what data is: RFC 6838's type and subtype names
		// have no '*'.
		{"datacontenttype */*", func(e *events.Event) { e.DataContentType = "*/*" }, "datacontenttype"},
		{"datacontenttype text/*", func(e *events.Event) { e.DataContentType = "text/*" }, "datacontenttype"},
		{"datacontenttype */json", func(e *events.Event) { e.DataContentType = "*/json" }, "datacontenttype"},
		{"datacontenttype range with parameter", func(e *events.Event) { e.DataContentType = "TEXT/*; charset=utf-8" }, "datacontenttype"},
		{"datacontenttype wildcard in a subtype", func(e *events.Event) { e.DataContentType = "application/*+json" }, "datacontenttype"},
		// RFC 2045's tokens and quoted strings are US-ASCII; mime.ParseMediaType
		// trims Unicode spaces and takes any UTF-8 in a quoted value.
		{"datacontenttype with a no-break space", func(e *events.Event) { e.DataContentType = "application/json\u00a0" }, "datacontenttype"},
		{"datacontenttype after an ideographic space", func(e *events.Event) { e.DataContentType = "\u3000application/json" }, "datacontenttype"},
		{"datacontenttype with non-ASCII in a quoted parameter", func(e *events.Event) { e.DataContentType = "text/plain; charset=\"\u00e9\"" }, "datacontenttype"},
		{"datacontenttype with spaces around ';'", func(e *events.Event) { e.DataContentType = "text/plain ; charset=utf-8" }, ""},
		// time: RFC 3339 has four-digit years.
		{"time year 10000", func(e *events.Event) { e.Time = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }, "time"},
		// Bindings write time in UTC, so its year there must have four digits too.
		{"time year 9999 west of UTC", func(e *events.Event) {
			e.Time = time.Date(9999, 12, 31, 23, 0, 0, 0, time.FixedZone("", -5*3600))
		}, "time"},
		{"time year 0 east of UTC", func(e *events.Event) { e.Time = time.Date(0, 1, 1, 0, 30, 0, 0, time.FixedZone("", 3600)) }, "time"},
		{"time year 9999 east of UTC", func(e *events.Event) {
			e.Time = time.Date(9999, 12, 31, 23, 0, 0, 0, time.FixedZone("", 5*3600))
		}, ""},
		// String type: no control characters, surrogates or noncharacters.
		{"control character in type", func(e *events.Event) { e.Type = "a\nb" }, "type"},
		{"C1 control character in subject", func(e *events.Event) { e.Subject = "a\u0085b" }, "subject"},
		{"invalid UTF-8 in id", func(e *events.Event) { e.ID = "a\xffb" }, "id"},
		{"surrogate in id", func(e *events.Event) { e.ID = "a\xed\xa0\x80b" }, "id"},
		{"noncharacter in subject", func(e *events.Event) { e.Subject = "a\ufffeb" }, "subject"},
		{"noncharacter U+FDD0 in subject", func(e *events.Event) { e.Subject = "a\ufdd0b" }, "subject"},
		{"replacement character is allowed", func(e *events.Event) { e.Subject = "a\ufffdb" }, ""},
		// Extension names: lowercase a-z and 0-9, at most 20 characters.
		{"extension uppercase", func(e *events.Event) { e.Extensions = map[string]string{"Ext": "v"} }, "Ext"},
		{"extension underscore", func(e *events.Event) { e.Extensions = map[string]string{"my_ext": "v"} }, "my_ext"},
		{"extension 20 chars", func(e *events.Event) { e.Extensions = map[string]string{strings.Repeat("a", 20): "v"} }, ""},
		{"extension 21 chars", func(e *events.Event) { e.Extensions = map[string]string{strings.Repeat("a", 21): "v"} }, strings.Repeat("a", 21)},
		{"extension named like an attribute", func(e *events.Event) { e.Extensions = map[string]string{"time": "v"} }, "time"},
		{"extension named data", func(e *events.Event) { e.Extensions = map[string]string{"data": "v"} }, "data"},
		{"extension empty value", func(e *events.Event) { e.Extensions = map[string]string{"ext": ""} }, "ext"},
		{"extension control character", func(e *events.Event) { e.Extensions = map[string]string{"ext": "a\x00"} }, "ext"},
		{"extension digits", func(e *events.Event) { e.Extensions = map[string]string{"ext1234": "v"} }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := valid()
			tt.mod(&e)
			err := e.Validate()
			if tt.attr == "" {
				if err != nil {
					t.Fatalf("Validate: %v, want nil", err)
				}
				return
			}
			var ve *events.ValidationError
			if !errors.As(err, &ve) || !errors.Is(err, events.ErrInvalid) {
				t.Fatalf("Validate: %v, want a *ValidationError matching ErrInvalid", err)
			}
			if ve.Attribute != tt.attr {
				t.Fatalf("Validate blamed %q (%v), want %q", ve.Attribute, err, tt.attr)
			}
		})
	}
}

// TestValidateMediaRangeReason: a media range is refused as such, so the
// caller learns what to change.
func TestValidateMediaRangeReason(t *testing.T) {
	e := valid()
	e.DataContentType = "*/*"
	var ve *events.ValidationError
	if err := e.Validate(); !errors.As(err, &ve) || !strings.Contains(ve.Reason, "media range") {
		t.Fatalf("Validate of datacontenttype */*: %v, want a reason naming a media range", err)
	}
}

// A source that url.Parse refuses gets a reason of bounded size: the
// parser's own error quotes the whole value.
// Its inner error may quote a part of the value too (an invalid port).
func TestValidateURIReasonBounded(t *testing.T) {
	for _, src := range []string{
		"http://[" + strings.Repeat("a", 100000),                  // unclosed IP literal
		"http://h:" + strings.Repeat("a", 100000),                 // the port, quoted by url.Parse's inner error
		"https://[::1]:" + strings.Repeat("b", 100000) + "/x?y#z", // the same after an IP literal
	} {
		e := valid()
		e.Source = src
		var ve *events.ValidationError
		err := e.Validate()
		if !errors.As(err, &ve) || !strings.Contains(ve.Reason, "URI-reference") {
			t.Fatalf("Validate of %.20q...: %v, want a URI-reference reason", src, err)
		}
		if n := len(err.Error()); n > 400 {
			t.Fatalf("error of %d bytes for a 100 kB source: %.200s...", n, err)
		}
	}
}

func TestChainOrder(t *testing.T) {
	var got []string
	mw := func(name string) events.Middleware {
		return func(next events.Handler) events.Handler {
			return func(ctx context.Context, e events.Event) error {
				got = append(got, name)
				return next(ctx, e)
			}
		}
	}
	h := events.Chain(func(context.Context, events.Event) error { got = append(got, "h"); return nil }, mw("a"), mw("b"))
	if err := h(context.Background(), valid()); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "a,b,h" {
		t.Fatalf("order %v, want a,b,h", got)
	}
}

// instantClock makes retry delays pass at once.
type instantClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *instantClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *instantClock) NewTimer(d time.Duration) retry.Timer {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
	ch := make(chan time.Time, 1)
	ch <- c.now
	return instantTimer(ch)
}

type instantTimer chan time.Time

func (t instantTimer) C() <-chan time.Time { return t }
func (t instantTimer) Stop() bool          { return false }

func retrier(t *testing.T, attempts int) *retry.Retrier {
	r, err := retry.New(retry.Policy{MaxAttempts: attempts, Jitter: retry.NoJitter}, retry.WithClock(&instantClock{now: time.Unix(0, 0)}))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// memPublisher records what it publishes, failing when fail is set.
type memPublisher struct {
	mu   sync.Mutex
	got  []events.Event
	fail error
}

func (p *memPublisher) Publish(_ context.Context, es ...events.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		return p.fail
	}
	p.got = append(p.got, es...)
	return nil
}
func (p *memPublisher) Close() error { return nil }

func TestRetryThenDeadLetter(t *testing.T) {
	boom := errors.New("boom\nsecond line")
	calls := 0
	h := events.Chain(func(context.Context, events.Event) error { calls++; return boom }, events.Recover())
	dlq := &memPublisher{}
	h = events.Chain(h, events.DeadLetter(dlq), events.Retry(retrier(t, 3)))
	e := valid()
	if err := h(context.Background(), e); err != nil {
		t.Fatalf("dead-lettered handler returned %v, want nil", err)
	}
	if calls != 3 {
		t.Fatalf("handler ran %d times, want 3", calls)
	}
	if len(dlq.got) != 1 {
		t.Fatalf("dead-lettered %d events, want 1", len(dlq.got))
	}
	d := dlq.got[0]
	if d.ID != e.ID || d.Extension(events.ExtDeadLetterAttempts) != "3" || !strings.Contains(d.Extension(events.ExtDeadLetterReason), "boom second line") {
		t.Fatalf("dead letter %+v", d)
	}
	if err := d.Validate(); err != nil {
		t.Fatalf("dead letter is invalid: %v", err)
	}
	if e.Extensions != nil {
		t.Fatal("DeadLetter changed the original event")
	}
}

func TestRetryPermanentAndSuccess(t *testing.T) {
	calls := 0
	h := events.Retry(retrier(t, 5))(func(context.Context, events.Event) error {
		calls++
		return events.Permanent(errors.New("bad input"))
	})
	err := h(context.Background(), valid())
	if calls != 1 || err == nil || events.Attempts(err) != 1 {
		t.Fatalf("permanent error: %d calls, err %v (attempts %d)", calls, err, events.Attempts(err))
	}
	calls = 0
	h = events.Retry(retrier(t, 5))(func(context.Context, events.Event) error {
		calls++
		if calls < 3 {
			return errors.New("transient")
		}
		return nil
	})
	if err := h(context.Background(), valid()); err != nil || calls != 3 {
		t.Fatalf("transient errors: %d calls, err %v", calls, err)
	}
}

func TestDeadLetterFailures(t *testing.T) {
	boom := errors.New("boom")
	perr := errors.New("dlq down")
	dlq := &memPublisher{fail: perr}
	h := events.DeadLetter(dlq)(func(context.Context, events.Event) error { return boom })
	err := h(context.Background(), valid())
	if !errors.Is(err, boom) || !errors.Is(err, perr) {
		t.Fatalf("DeadLetter with a failing dlq: %v, want both errors", err)
	}
	// A stopped handler is not dead-lettered.
	dlq = &memPublisher{}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h = events.DeadLetter(dlq)(func(ctx context.Context, _ events.Event) error { return ctx.Err() })
	if err := h(ctx, valid()); !errors.Is(err, context.Canceled) || len(dlq.got) != 0 {
		t.Fatalf("cancelled handler: err %v, dead-lettered %d", err, len(dlq.got))
	}
}

func TestRecover(t *testing.T) {
	h := events.Recover()(func(context.Context, events.Event) error { panic("kaboom") })
	err := h(context.Background(), valid())
	var pe *events.PanicError
	if !errors.As(err, &pe) || pe.Value != "kaboom" || len(pe.Stack) == 0 {
		t.Fatalf("Recover: %v", err)
	}
	if retry.IsRetryable(err) {
		t.Fatal("a recovered panic is retryable, want permanent")
	}
}

func TestReason(t *testing.T) {
	long := strings.Repeat("é", events.MaxReasonLen)
	r := events.Reason(errors.New(long))
	if len(r) > events.MaxReasonLen || !strings.HasPrefix(long, r) {
		t.Fatalf("Reason cut badly: %d bytes", len(r))
	}
	if events.Reason(nil) == "" || events.Reason(errors.New("")) == "" {
		t.Fatal("Reason is empty")
	}
}

func TestTracingContinuesProducerTrace(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	cfg := events.TracingConfig{TracerProvider: tp, Propagator: propagation.TraceContext{}}

	// The producer side.
	pctx, pspan := tp.Tracer("test").Start(context.Background(), "publish")
	e := valid()
	events.InjectTrace(pctx, cfg, &e)
	pspan.End()
	if e.Extension(events.ExtTraceParent) == "" {
		t.Fatal("InjectTrace set no traceparent")
	}
	// An event that already has a traceparent keeps it.
	kept := e.Clone()
	_, other := tp.Tracer("test").Start(context.Background(), "other")
	events.InjectTrace(trace.ContextWithSpan(context.Background(), other), cfg, &kept)
	other.End()
	if kept.Extension(events.ExtTraceParent) != e.Extension(events.ExtTraceParent) {
		t.Fatal("InjectTrace replaced an existing traceparent")
	}

	var inner trace.SpanContext
	h := events.Tracing(cfg)(func(ctx context.Context, _ events.Event) error {
		inner = trace.SpanContextFromContext(ctx)
		return errors.New("handler failed")
	})
	_ = h(context.Background(), e)
	if inner.TraceID() != pspan.SpanContext().TraceID() {
		t.Fatalf("consumer trace %s, want the producer's %s", inner.TraceID(), pspan.SpanContext().TraceID())
	}
	var found bool
	for _, s := range rec.Ended() {
		if s.Name() == "process "+e.Type {
			found = true
			if s.SpanKind() != trace.SpanKindConsumer || s.Status().Code.String() != "Error" || s.Parent().SpanID() != pspan.SpanContext().SpanID() {
				t.Fatalf("consumer span kind %v status %v parent %v", s.SpanKind(), s.Status(), s.Parent().SpanID())
			}
		}
	}
	if !found {
		t.Fatal("no consumer span recorded")
	}
}

// TestInjectTraceLeavesCopiesAlone: a publisher injects into its own copy of
// the caller's event (Publish takes events by value), which shares the
// Extensions map: the caller's event must not change, and two goroutines
// publishing copies of one event must not write one map.
func TestInjectTraceLeavesCopiesAlone(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	defer func() { _ = tp.Shutdown(context.Background()) }()
	cfg := events.TracingConfig{TracerProvider: tp, Propagator: propagation.TraceContext{}}
	orig := valid()
	orig.SetExtension(events.ExtPartitionKey, "customer-9")

	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			ctx, span := tp.Tracer("test").Start(context.Background(), "publish")
			defer span.End()
			e := orig // what a Publisher's loop over its events holds
			events.InjectTrace(ctx, cfg, &e)
			if e.Extension(events.ExtTraceParent) == "" || e.Key() != "customer-9" {
				t.Errorf("injected copy: extensions %v", e.Extensions)
			}
		})
	}
	wg.Wait()
	if len(orig.Extensions) != 1 {
		t.Fatalf("InjectTrace on a copy changed the caller's event: extensions %v", orig.Extensions)
	}
}

// TestInjectTraceDropsOrphanTraceState: a tracestate without a traceparent
// belongs to no trace; InjectTrace must not pair it with the new
// traceparent (W3C Trace Context: tracestate is read only with its
// traceparent), when ctx's own trace state is empty.
func TestInjectTraceDropsOrphanTraceState(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	defer func() { _ = tp.Shutdown(context.Background()) }()
	cfg := events.TracingConfig{TracerProvider: tp, Propagator: propagation.TraceContext{}}
	ctx, span := tp.Tracer("test").Start(context.Background(), "publish")
	defer span.End()
	e := valid()
	e.SetExtension(events.ExtTraceState, "vendor=stale")
	events.InjectTrace(ctx, cfg, &e)
	if e.Extension(events.ExtTraceParent) == "" {
		t.Fatal("InjectTrace set no traceparent")
	}
	if ts := e.Extension(events.ExtTraceState); ts != "" {
		t.Fatalf("tracestate %q of no trace kept beside the new traceparent", ts)
	}
}

// pastDeadlineCtx is a context whose deadline has passed while its Done
// channel is not yet closed: the moment between a deadline and the timer
// that cancels the context, which the retry package already treats as the
// context having ended.
type pastDeadlineCtx struct{ context.Context }

func (pastDeadlineCtx) Deadline() (time.Time, bool) { return time.Now().Add(-time.Millisecond), true }

// TestDeadLetterNotAtDeadline: a handler stopped by its ctx's deadline was
// stopped, not failed, even when the context's timer has not fired yet.
func TestDeadLetterNotAtDeadline(t *testing.T) {
	dlq := &memPublisher{}
	stopped := fmt.Errorf("calling the store: %w", context.DeadlineExceeded)
	h := events.DeadLetter(dlq)(func(context.Context, events.Event) error { return stopped })
	err := h(pastDeadlineCtx{context.Background()}, valid())
	if !errors.Is(err, stopped) || len(dlq.got) != 0 {
		t.Fatalf("handler stopped at its deadline: err %v, dead-lettered %d", err, len(dlq.got))
	}
	// Behind Retry, as in Chain(h, DeadLetter(dlq), Retry(r)).
	h = events.Chain(func(context.Context, events.Event) error { return stopped }, events.DeadLetter(dlq), events.Retry(retrier(t, 3)))
	if err := h(pastDeadlineCtx{context.Background()}, valid()); err == nil || len(dlq.got) != 0 {
		t.Fatalf("retried handler stopped at its deadline: err %v, dead-lettered %d", err, len(dlq.got))
	}
}

// TestValidateReasonQuotesExactly: a reason names the character or value at
// fault as it is, escaped: not a byte of a UTF-8 sequence read as Latin-1,
// nor a quote left bare, nor a rune cut in two.
func TestValidateReasonQuotesExactly(t *testing.T) {
	tests := []struct {
		mod  func(*events.Event)
		want string
	}{
		{func(e *events.Event) { e.Source = "/café" }, `character 'é' is not allowed`},
		{func(e *events.Event) { e.Source = `/a"b` }, `character '"' is not allowed`},
		{func(e *events.Event) { e.SpecVersion = `1.0"` }, `is "1.0\"", want "1.0"`},
		{func(e *events.Event) { e.SpecVersion = "x" + strings.Repeat("é", 30) }, `is "x` + strings.Repeat("é", 19) + `"...,`},
	}
	for _, tt := range tests {
		e := valid()
		tt.mod(&e)
		var ve *events.ValidationError
		if err := e.Validate(); !errors.As(err, &ve) || !strings.Contains(ve.Reason, tt.want) {
			t.Errorf("Validate: %v, want a reason with %s", err, tt.want)
		}
	}
}

// TestTracingErrorBounded: the consumer span records a handler's error,
// which may quote a whole payload, at most MaxReasonLen bytes long (as a
// dead-letter reason), in its status and its exception event: an exporter
// sends spans in batches, and one huge span can make a batch too large for
// the collector, losing the others with it.
func TestTracingErrorBounded(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	huge := errors.New("bad payload: " + strings.Repeat("x", 1<<20))
	h := events.Tracing(events.TracingConfig{TracerProvider: tp})(func(context.Context, events.Event) error { return huge })
	if err := h(context.Background(), valid()); err != huge {
		t.Fatalf("Tracing returned %v, want the handler's error itself", err)
	}
	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("%d spans ended, want 1", len(spans))
	}
	s := spans[0]
	if d := s.Status().Description; s.Status().Code.String() != "Error" || len(d) > events.MaxReasonLen || !strings.HasPrefix(d, "bad payload: x") {
		t.Fatalf("status %v with a description of %d bytes", s.Status().Code, len(d))
	}
	var exceptions int
	for _, ev := range s.Events() {
		if ev.Name != "exception" {
			continue
		}
		exceptions++
		for _, a := range ev.Attributes {
			if n := len(a.Value.String()); n > events.MaxReasonLen {
				t.Fatalf("exception attribute %s of %d bytes", a.Key, n)
			}
			if a.Key == "exception.message" && !strings.HasPrefix(a.Value.AsString(), "bad payload: x") {
				t.Fatalf("exception.message %.40q...", a.Value.AsString())
			}
		}
	}
	if exceptions != 1 {
		t.Fatalf("%d exception events, want 1", exceptions)
	}
}

// TestNewIDConcurrent: IDs made by many goroutines at once, many per
// millisecond, are all distinct, each goroutine's sort strictly in the
// order it made them, and each is a UUIDv7 whose timestamp is the time it
// was made.
func TestNewIDConcurrent(t *testing.T) {
	const goroutines, perGoroutine = 8, 4000
	ids := make([][]string, goroutines)
	before := time.Now().UnixMilli()
	start := make(chan struct{})
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			<-start
			out := make([]string, perGoroutine)
			for i := range out {
				out[i] = events.NewID()
			}
			ids[g] = out
		})
	}
	close(start)
	wg.Wait()
	after := time.Now().UnixMilli()

	seen := make(map[string]bool, goroutines*perGoroutine)
	perMilli := map[int64]int{}
	for g, out := range ids {
		for i, id := range out {
			if seen[id] {
				t.Fatalf("NewID %q made twice", id)
			}
			seen[id] = true
			if i > 0 && id <= out[i-1] {
				t.Fatalf("goroutine %d: NewID %q does not sort after %q", g, id, out[i-1])
			}
			u, err := uuid.Parse(id)
			if err != nil || u.Version() != 7 || u.Variant() != uuid.RFC4122 {
				t.Fatalf("NewID %q is not an RFC 9562 UUIDv7 (err %v)", id, err)
			}
			ms := u.Time() // 100 ns units since 1582; compare milliseconds
			sec, nsec := ms.UnixTime()
			milli := sec*1000 + nsec/1e6
			// The generator may run ahead of the clock by a few ms when
			// more than 4096 IDs are made in one millisecond.
			if milli < before || milli > after+int64(goroutines*perGoroutine/4096)+1 {
				t.Fatalf("NewID %q has time %d ms, want in [%d, %d]", id, milli, before, after)
			}
			perMilli[milli]++
		}
	}
	var busiest int
	for _, n := range perMilli {
		busiest = max(busiest, n)
	}
	t.Logf("%d IDs over %d ms, at most %d in one", len(seen), len(perMilli), busiest)
}

// TestDeadLetterNotWhenRetriesCutShort: behind dedupe the handler's ctx has
// a deadline (the claim's lease); when Retry stops because its next attempt
// would start after it (retry.ErrDeadline), the retries were not spent and
// the event was not judged: DeadLetter returns the error, for the event to
// be delivered again, instead of dead-lettering it after one attempt.
func TestDeadLetterNotWhenRetriesCutShort(t *testing.T) {
	r, err := retry.New(retry.Policy{MaxAttempts: 5, InitialInterval: time.Hour, MaxInterval: time.Hour, MaxElapsedTime: -1, Jitter: retry.NoJitter})
	if err != nil {
		t.Fatal(err)
	}
	dlq := &memPublisher{}
	calls := 0
	transient := errors.New("connection reset")
	h := events.Chain(func(context.Context, events.Event) error { calls++; return transient }, events.DeadLetter(dlq), events.Retry(r))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = h(ctx, valid())
	if !errors.Is(err, transient) || !errors.Is(err, retry.ErrDeadline) || len(dlq.got) != 0 || calls != 1 {
		t.Fatalf("retries cut short by the deadline: %d calls, err %v, dead-lettered %d; want the error, none dead-lettered", calls, err, len(dlq.got))
	}
}

// TestDeadLetterInnerDeadlineIsAFailure: a handler whose own retry loop ran
// out of its own call's deadline failed; the Retry outside treats that as
// final, and DeadLetter dead-letters it.
func TestDeadLetterInnerDeadlineIsAFailure(t *testing.T) {
	inner, err := retry.New(retry.Policy{MaxAttempts: 5, InitialInterval: time.Hour, MaxInterval: time.Hour, MaxElapsedTime: -1, Jitter: retry.NoJitter})
	if err != nil {
		t.Fatal(err)
	}
	dlq := &memPublisher{}
	h := events.Chain(func(ctx context.Context, _ events.Event) error {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		return inner.Do(cctx, func(context.Context) error { return errors.New("connection reset") })
	}, events.DeadLetter(dlq), events.Retry(retrier(t, 3)))
	if err := h(context.Background(), valid()); err != nil || len(dlq.got) != 1 {
		t.Fatalf("inner loop out of its own deadline: err %v, dead-lettered %d; want it dead-lettered", err, len(dlq.got))
	}
}
