package observability

import (
	"context"
	"slices"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
)

// W3C returns the W3C Trace Context and Baggage propagator, the one Setup
// builds and the fallback of DefaultPropagator.
func W3C() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// DefaultPropagator returns a propagator that, at each call, uses the otel
// global propagator when one has been set (otel.SetTextMapPropagator, or
// Setup with SetGlobal), and W3C Trace Context plus Baggage otherwise. It is
// what a nil Providers.Propagator means, so that trace context flows between
// instances even in a program that never set the global. A global that
// propagates no fields at all counts as unset.
func DefaultPropagator() propagation.TextMapPropagator { return defaultPropagator{} }

type defaultPropagator struct{}

var _ propagation.TextMapPropagator = defaultPropagator{}

func (defaultPropagator) resolve() propagation.TextMapPropagator {
	if g := otel.GetTextMapPropagator(); len(g.Fields()) > 0 {
		return g
	}
	return W3C()
}

func (p defaultPropagator) Inject(ctx context.Context, c propagation.TextMapCarrier) {
	p.resolve().Inject(ctx, c)
}

func (p defaultPropagator) Extract(ctx context.Context, c propagation.TextMapCarrier) context.Context {
	return p.resolve().Extract(ctx, c)
}

func (p defaultPropagator) Fields() []string { return p.resolve().Fields() }

// Inject writes the trace context and baggage of ctx into carrier with
// DefaultPropagator. Use it when publishing a Kafka record or an MQ message:
//
//	observability.Inject(ctx, observability.Headers(&record.Headers))
//
// To use a specific propagator, call its Inject method instead.
func Inject(ctx context.Context, carrier propagation.TextMapCarrier) {
	DefaultPropagator().Inject(ctx, carrier)
}

// Extract returns ctx with the remote trace context and baggage read from
// carrier with DefaultPropagator. Start the consumer span from the returned
// context so that it joins the producer's trace.
func Extract(ctx context.Context, carrier propagation.TextMapCarrier) context.Context {
	return DefaultPropagator().Extract(ctx, carrier)
}

// Header is one key/value pair of a message header list, with the same shape
// as franz-go's kgo.RecordHeader.
type Header struct {
	Key   string
	Value []byte
}

// HeadersCarrier is a propagation.TextMapCarrier over a slice of key/value
// pairs. Its element type may be any struct type of the shape
// struct{ Key string; Value []byte }, such as Header or franz-go's
// kgo.RecordHeader, so messaging adapters use it without this package
// importing their client. Build one with Headers.
//
// Get returns the first value for a key; Set replaces every pair with that key
// by one pair at the position of the first, or appends. Keys are compared
// exactly (Kafka header keys are case-sensitive; the W3C keys are lower
// case). Not safe for concurrent use, like the slice it wraps.
type HeadersCarrier[H ~struct {
	Key   string
	Value []byte
}] struct {
	headers *[]H
}

// Headers returns a carrier that reads and writes *headers in place.
func Headers[H ~struct {
	Key   string
	Value []byte
}](headers *[]H) HeadersCarrier[H] {
	return HeadersCarrier[H]{headers: headers}
}

var _ propagation.TextMapCarrier = HeadersCarrier[Header]{}

// Get returns the value of the first pair with key, or "".
func (c HeadersCarrier[H]) Get(key string) string {
	if c.headers == nil {
		return ""
	}
	for _, h := range *c.headers {
		if p := Header(h); p.Key == key {
			return string(p.Value)
		}
	}
	return ""
}

// Set stores value under key, replacing any pairs already there.
func (c HeadersCarrier[H]) Set(key, value string) {
	if c.headers == nil {
		return
	}
	hs := *c.headers
	i := slices.IndexFunc(hs, func(h H) bool { return Header(h).Key == key })
	if i < 0 {
		*c.headers = append(hs, H(Header{Key: key, Value: []byte(value)}))
		return
	}
	hs[i] = H(Header{Key: key, Value: []byte(value)})
	// Drop later duplicates in place.
	out := hs[:i+1]
	for _, h := range hs[i+1:] {
		if Header(h).Key != key {
			out = append(out, h)
		}
	}
	clear(hs[len(out):])
	*c.headers = out
}

// Keys returns the keys of all pairs, in order, duplicates included.
func (c HeadersCarrier[H]) Keys() []string {
	if c.headers == nil {
		return nil
	}
	keys := make([]string, 0, len(*c.headers))
	for _, h := range *c.headers {
		keys = append(keys, Header(h).Key)
	}
	return keys
}

// CarrierFuncs adapts any property store, such as IBM MQ message properties,
// to propagation.TextMapCarrier through three functions. A nil GetFunc reads
// nothing, a nil SetFunc writes nothing and a nil KeysFunc lists no keys.
type CarrierFuncs struct {
	GetFunc  func(key string) string
	SetFunc  func(key, value string)
	KeysFunc func() []string
}

var _ propagation.TextMapCarrier = CarrierFuncs{}

// Get calls GetFunc.
func (c CarrierFuncs) Get(key string) string {
	if c.GetFunc == nil {
		return ""
	}
	return c.GetFunc(key)
}

// Set calls SetFunc.
func (c CarrierFuncs) Set(key, value string) {
	if c.SetFunc != nil {
		c.SetFunc(key, value)
	}
}

// Keys calls KeysFunc.
func (c CarrierFuncs) Keys() []string {
	if c.KeysFunc == nil {
		return nil
	}
	return c.KeysFunc()
}
