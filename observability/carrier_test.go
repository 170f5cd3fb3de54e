package observability_test

import (
	"context"
	"slices"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/activekit/activekit/observability"
)

// kgoRecordHeader has the shape of franz-go's kgo.RecordHeader.
type kgoRecordHeader struct {
	Key   string
	Value []byte
}

func ctxWithSpanAndBaggage(t *testing.T) context.Context {
	t.Helper()
	m, err := baggage.NewMember("tenant", "acme")
	if err != nil {
		t.Fatal(err)
	}
	b, err := baggage.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return baggage.ContextWithBaggage(trace.ContextWithSpanContext(context.Background(), testSpanContext), b)
}

func checkExtracted(t *testing.T, ctx context.Context) {
	t.Helper()
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() || !sc.IsRemote() {
		t.Fatalf("extracted span context %v is not a valid remote one", sc)
	}
	if sc.TraceID() != testSpanContext.TraceID() || sc.SpanID() != testSpanContext.SpanID() || !sc.IsSampled() {
		t.Errorf("extracted %v, want %v", sc, testSpanContext)
	}
	if got := baggage.FromContext(ctx).Member("tenant").Value(); got != "acme" {
		t.Errorf("baggage tenant = %q, want acme", got)
	}
}

func TestHeadersCarrierRoundTrip(t *testing.T) {
	headers := []kgoRecordHeader{{Key: "ce_type", Value: []byte("order.created")}, {Key: "traceparent", Value: []byte("stale")}}
	observability.Inject(ctxWithSpanAndBaggage(t), observability.Headers(&headers))

	want := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	c := observability.Headers(&headers)
	if got := c.Get("traceparent"); got != want {
		t.Fatalf("traceparent = %q, want %q", got, want)
	}
	keys := c.Keys()
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"baggage", "ce_type", "traceparent"}) {
		t.Fatalf("keys = %v (the stale traceparent must be replaced, not duplicated)", keys)
	}
	if headers[0].Key != "ce_type" || string(headers[0].Value) != "order.created" {
		t.Errorf("unrelated header changed: %+v", headers[0])
	}
	checkExtracted(t, observability.Extract(context.Background(), observability.Headers(&headers)))
}

func TestHeadersCarrierSet(t *testing.T) {
	hs := []observability.Header{{Key: "a", Value: []byte("1")}, {Key: "k", Value: []byte("x")}, {Key: "b", Value: []byte("2")}, {Key: "k", Value: []byte("y")}}
	c := observability.Headers(&hs)
	c.Set("k", "z")
	want := []observability.Header{{Key: "a", Value: []byte("1")}, {Key: "k", Value: []byte("z")}, {Key: "b", Value: []byte("2")}}
	if !slices.EqualFunc(hs, want, func(a, b observability.Header) bool { return a.Key == b.Key && string(a.Value) == string(b.Value) }) {
		t.Fatalf("headers = %+v, want %+v", hs, want)
	}
	c.Set("new", "v")
	if got := c.Get("new"); got != "v" || len(hs) != 4 {
		t.Fatalf("after append: %+v", hs)
	}
	if got := c.Get("missing"); got != "" {
		t.Fatalf("Get(missing) = %q", got)
	}
	var nilCarrier observability.HeadersCarrier[observability.Header]
	nilCarrier.Set("k", "v") // must not panic
	if nilCarrier.Get("k") != "" || nilCarrier.Keys() != nil {
		t.Fatal("zero carrier is not empty")
	}
}

func TestCarrierFuncsRoundTrip(t *testing.T) {
	props := map[string]string{}
	c := observability.CarrierFuncs{
		GetFunc: func(k string) string { return props[k] },
		SetFunc: func(k, v string) { props[k] = v },
		KeysFunc: func() []string {
			keys := make([]string, 0, len(props))
			for k := range props {
				keys = append(keys, k)
			}
			return keys
		},
	}
	observability.Inject(ctxWithSpanAndBaggage(t), c)
	if props["traceparent"] == "" || props["baggage"] != "tenant=acme" {
		t.Fatalf("props = %v", props)
	}
	checkExtracted(t, observability.Extract(context.Background(), c))

	var empty observability.CarrierFuncs
	empty.Set("k", "v")
	if empty.Get("k") != "" || empty.Keys() != nil {
		t.Fatal("empty CarrierFuncs is not empty")
	}
	if sc := trace.SpanContextFromContext(observability.Extract(context.Background(), empty)); sc.IsValid() {
		t.Fatalf("extracted %v from nothing", sc)
	}
}

func TestMapCarrierWorksWithInjectExtract(t *testing.T) {
	m := propagation.MapCarrier{}
	observability.Inject(ctxWithSpanAndBaggage(t), m)
	checkExtracted(t, observability.Extract(context.Background(), m))
}
