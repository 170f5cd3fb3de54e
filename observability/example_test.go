package observability_test

import (
	"bufio"
	"context"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/activekit/activekit/observability"
)

func ExampleNewIdentity() {
	// In a real service leave Getenv nil (os.Getenv) and InstanceID empty:
	// the instance ID then comes from ACTIVEKIT_INSTANCE_ID, the pod name,
	// the host name and pid with a random suffix, or a random UUID.
	env := map[string]string{
		"KUBERNETES_SERVICE_HOST": "10.96.0.1",
		"HOSTNAME":                "orders-7d9f-abcde",
		"ACTIVEKIT_ENVIRONMENT":   "production",
	}
	id, err := observability.NewIdentity(observability.IdentityConfig{
		ServiceName:    "orders",
		ServiceVersion: "1.4.2", // empty means: from the build information
		Getenv:         func(k string) string { return env[k] },
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(id)
	for _, kv := range id.Attributes() {
		fmt.Printf("%s=%s\n", kv.Key, kv.Value.AsString())
	}
	// Output:
	// orders@1.4.2/production/orders-7d9f-abcde
	// service.name=orders
	// service.version=1.4.2
	// service.instance.id=orders-7d9f-abcde
	// deployment.environment.name=production
}

func exampleIdentity() observability.Identity {
	id, err := observability.NewIdentity(observability.IdentityConfig{
		ServiceName:    "orders",
		ServiceVersion: "1.4.2",
		InstanceID:     "orders-1",
		Getenv:         func(string) string { return "" }, // ignore ACTIVEKIT_ENVIRONMENT here
	})
	if err != nil {
		log.Fatal(err)
	}
	return id
}

func ExampleSetup() {
	ctx := context.Background()
	tel, err := observability.Setup(ctx, observability.Config{
		Identity: exampleIdentity(),
		// Traces: observability.ExporterOTLPHTTP, // endpoint from OTEL_EXPORTER_OTLP_ENDPOINT
		Metrics: observability.ExporterPrometheus,
	})
	if err != nil {
		log.Fatal(err)
	}
	// Flush on the way out, after the HTTP server has drained.
	defer func() {
		if err := tel.Shutdown(ctx); err != nil {
			log.Print(err)
		}
	}()

	counter, err := tel.MeterProvider().Meter("orders").Int64Counter("orders.created")
	if err != nil {
		log.Fatal(err)
	}
	counter.Add(ctx, 3)

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", tel.MetricsHandler())

	// Scrape it, as Prometheus would.
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	s := bufio.NewScanner(w.Body)
	for s.Scan() {
		if strings.HasPrefix(s.Text(), "orders_created_total{") {
			fmt.Println(s.Text()[strings.LastIndexByte(s.Text(), ' ')+1:])
		}
	}
	// Output:
	// 3
}

func ExampleNewLogHandler() {
	// Drop the time so the output is stable.
	noTime := func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}
	logger := slog.New(observability.NewLogHandler(
		slog.NewJSONHandler(os.Stdout, &slog.HandlerOptions{ReplaceAttr: noTime}),
		exampleIdentity(),
	))

	// Inside a request the context carries the server span; here we make one.
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c},
		SpanID:     trace.SpanID{0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31},
		TraceFlags: trace.FlagsSampled,
	})
	ctx := trace.ContextWithSpanContext(context.Background(), sc)

	logger.WithGroup("order").InfoContext(ctx, "created", "id", 42)
	// Output:
	// {"level":"INFO","msg":"created","service.name":"orders","service.version":"1.4.2","service.instance.id":"orders-1","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","order":{"id":42}}
}

func ExampleMiddleware() {
	// In a service, pass tel.Providers() from Setup; here a recorder shows
	// the span.
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())

	mux := http.NewServeMux()
	mux.HandleFunc("GET /items/{id}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "item %s", r.PathValue("id"))
	})
	handler := observability.Middleware(observability.Providers{TracerProvider: tp})(mux)

	handler.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/items/42", nil))
	fmt.Println(rec.Ended()[0].Name())

	// Calls to other services carry the trace on: use NewTransport.
	client := &http.Client{Transport: observability.NewTransport(nil, observability.Providers{TracerProvider: tp})}
	_ = client
	// Output:
	// GET /items/{id}
}

func ExampleInject() {
	// A Kafka record's headers ([]kgo.RecordHeader has the same shape).
	var headers []observability.Header

	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c},
		SpanID:     trace.SpanID{0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31},
		TraceFlags: trace.FlagsSampled,
	})
	observability.Inject(trace.ContextWithSpanContext(context.Background(), sc), observability.Headers(&headers))
	for _, h := range headers {
		fmt.Printf("%s: %s\n", h.Key, h.Value)
	}

	// The consumer continues the trace.
	ctx := observability.Extract(context.Background(), observability.Headers(&headers))
	fmt.Println(trace.SpanContextFromContext(ctx).TraceID())
	// Output:
	// traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01
	// 0af7651916cd43dd8448eb211c80319c
}
