package observability_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/activekit/activekit/observability"
)

// newRecordingProvider returns a tracer provider whose ended spans land in
// the returned recorder.
func newRecordingProvider(t *testing.T) (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, rec
}

func TestMiddlewareSpanName(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	tests := []struct {
		name   string
		build  func(mw func(http.Handler) http.Handler) http.Handler
		method string
		path   string
		want   string
	}{
		{
			name: "around the mux, method pattern",
			build: func(mw func(http.Handler) http.Handler) http.Handler {
				mux := http.NewServeMux()
				mux.Handle("GET /items/{id}", ok)
				return mw(mux)
			},
			method: http.MethodGet, path: "/items/42", want: "GET /items/{id}",
		},
		{
			name: "around the mux, pattern without method",
			build: func(mw func(http.Handler) http.Handler) http.Handler {
				mux := http.NewServeMux()
				mux.Handle("/items/{id}", ok)
				return mw(mux)
			},
			method: http.MethodPost, path: "/items/42", want: "POST /items/{id}",
		},
		{
			name: "around one route",
			build: func(mw func(http.Handler) http.Handler) http.Handler {
				mux := http.NewServeMux()
				mux.Handle("DELETE /items/{id}", mw(ok))
				return mux
			},
			method: http.MethodDelete, path: "/items/7", want: "DELETE /items/{id}",
		},
		{
			name: "no route matched",
			build: func(mw func(http.Handler) http.Handler) http.Handler {
				mux := http.NewServeMux()
				mux.Handle("GET /items/{id}", ok)
				return mw(mux)
			},
			method: http.MethodGet, path: "/nothing/here", want: "GET",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp, rec := newRecordingProvider(t)
			h := tt.build(observability.Middleware(observability.Providers{TracerProvider: tp}))
			req := httptest.NewRequestWithContext(t.Context(), tt.method, tt.path, nil)
			h.ServeHTTP(httptest.NewRecorder(), req)
			spans := rec.Ended()
			if len(spans) != 1 {
				t.Fatalf("got %d spans, want 1", len(spans))
			}
			if got := spans[0].Name(); got != tt.want {
				t.Errorf("span name = %q, want %q", got, tt.want)
			}
			if spans[0].SpanKind() != trace.SpanKindServer {
				t.Errorf("span kind = %v, want server", spans[0].SpanKind())
			}
		})
	}
}

// TestMiddlewareCorrelatesLogs proves the point of the package: a log line
// written inside a handler carries the trace id of the request's server span
// and the identity of the instance.
func TestMiddlewareCorrelatesLogs(t *testing.T) {
	tp, rec := newRecordingProvider(t)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })

	var logs bytes.Buffer
	logger := slog.New(observability.NewLogHandler(slog.NewJSONHandler(&logs, nil), testIdentity(t)))

	mux := http.NewServeMux()
	mux.HandleFunc("GET /items/{id}", func(w http.ResponseWriter, r *http.Request) {
		logger.InfoContext(r.Context(), "loading item", "id", r.PathValue("id"))
		io.WriteString(w, "ok")
	})
	h := observability.Middleware(observability.Providers{TracerProvider: tp, MeterProvider: mp})(mux)
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/items/42", nil))

	spans := rec.Ended()
	if len(spans) != 1 || spans[0].Name() != "GET /items/{id}" {
		t.Fatalf("spans = %v", spans)
	}
	lines := parseJSONLines(t, logs.Bytes())
	if len(lines) != 1 {
		t.Fatalf("log lines: %s", logs.String())
	}
	line := lines[0]
	if got, want := line["trace_id"], spans[0].SpanContext().TraceID().String(); got != want {
		t.Errorf("log trace_id = %v, want the server span's %s", got, want)
	}
	if got, want := line["span_id"], spans[0].SpanContext().SpanID().String(); got != want {
		t.Errorf("log span_id = %v, want the server span's %s", got, want)
	}
	if line["service.instance.id"] != "orders-7d9f-abcde" || line["id"] != "42" {
		t.Errorf("log line = %v", line)
	}

	// The request metrics carry the route, not the raw path.
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	if !hasRoute(rm, "http.server.request.duration", "/items/{id}") {
		t.Errorf("no http.server.request.duration point with http.route=/items/{id}: %+v", rm)
	}
}

func hasRoute(rm metricdata.ResourceMetrics, name, route string) bool {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			h, ok := m.Data.(metricdata.Histogram[float64])
			if !ok {
				return false
			}
			for _, dp := range h.DataPoints {
				if v, ok := dp.Attributes.Value(attribute.Key("http.route")); ok && v.AsString() == route {
					return true
				}
			}
		}
	}
	return false
}

// TestTransportPropagatesToMiddleware runs a client and a server with separate
// tracer providers (two instances) over a real loopback connection: the trace
// context can only reach the server through the traceparent header. The
// propagator is left nil on both sides and no global is set, so this also
// proves the W3C default.
func TestTransportPropagatesToMiddleware(t *testing.T) {
	clientTP, clientRec := newRecordingProvider(t)
	serverTP, serverRec := newRecordingProvider(t)

	var gotTraceparent string
	mux := http.NewServeMux()
	mux.HandleFunc("GET /items/{id}", func(w http.ResponseWriter, r *http.Request) {
		gotTraceparent = r.Header.Get("traceparent")
		w.WriteHeader(http.StatusOK)
	})
	srv := httptest.NewServer(observability.Middleware(observability.Providers{TracerProvider: serverTP})(mux))
	defer srv.Close()

	client := &http.Client{Transport: observability.NewTransport(srv.Client().Transport, observability.Providers{TracerProvider: clientTP})}
	ctx, parent := clientTP.Tracer("test").Start(t.Context(), "caller")
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/items/42", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	parent.End()

	var clientSpan sdktrace.ReadOnlySpan
	for _, s := range clientRec.Ended() {
		if s.SpanKind() == trace.SpanKindClient {
			clientSpan = s
		}
	}
	if clientSpan == nil {
		t.Fatalf("no client span in %v", clientRec.Ended())
	}
	serverSpans := serverRec.Ended()
	if len(serverSpans) != 1 {
		t.Fatalf("got %d server spans, want 1", len(serverSpans))
	}
	server := serverSpans[0]
	if server.Name() != "GET /items/{id}" {
		t.Errorf("server span name = %q", server.Name())
	}
	if server.SpanContext().TraceID() != parent.SpanContext().TraceID() {
		t.Errorf("server trace id %s, want the caller's %s", server.SpanContext().TraceID(), parent.SpanContext().TraceID())
	}
	if server.Parent().SpanID() != clientSpan.SpanContext().SpanID() || !server.Parent().IsRemote() {
		t.Errorf("server parent = %v, want the remote client span %v", server.Parent(), clientSpan.SpanContext())
	}
	if clientSpan.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("client span parent = %v, want the caller span", clientSpan.Parent())
	}
	if gotTraceparent == "" {
		t.Error("no traceparent header reached the server")
	}
}
