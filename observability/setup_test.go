package observability_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/activekit/activekit/observability"
)

func checkIdentityResource(t *testing.T, res *resource.Resource) {
	t.Helper()
	for k, v := range map[attribute.Key]string{
		"service.name":                "orders",
		"service.version":             "1.4.2",
		"service.instance.id":         "orders-7d9f-abcde",
		"deployment.environment.name": "production",
	} {
		if got, ok := res.Set().Value(k); !ok || got.AsString() != v {
			t.Errorf("resource %s = %q (present %v), want %q", k, got.AsString(), ok, v)
		}
	}
}

func shutdown(t *testing.T, tel *observability.Telemetry) {
	t.Helper()
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// TestSetupDefaultExportsNothing checks the zero config: providers that work
// (spans get IDs, the resource carries the identity) but export nothing and
// leave the otel globals alone.
func TestSetupDefaultExportsNothing(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	reader := sdkmetric.NewManualReader()
	tel, err := observability.Setup(t.Context(), observability.Config{
		Identity:       testIdentity(t),
		SpanProcessors: []sdktrace.SpanProcessor{rec},
		MetricReaders:  []sdkmetric.Reader{reader},
	})
	if err != nil {
		t.Fatal(err)
	}
	if otel.GetTracerProvider() == tel.TracerProvider() {
		t.Error("Setup set the global tracer provider without SetGlobal")
	}
	if tel.MetricsHandler() != nil {
		t.Error("MetricsHandler is not nil without the prometheus exporter")
	}
	checkIdentityResource(t, tel.Resource())

	_, span := tel.TracerProvider().Tracer("test").Start(t.Context(), "work")
	if !span.SpanContext().IsValid() || !span.SpanContext().IsSampled() {
		t.Errorf("span context %v is not valid and sampled", span.SpanContext())
	}
	span.End()
	counter, err := tel.MeterProvider().Meter("test").Int64Counter("orders.created")
	if err != nil {
		t.Fatal(err)
	}
	counter.Add(t.Context(), 2)

	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("got %d spans", len(spans))
	}
	checkIdentityResource(t, spans[0].Resource())

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	checkIdentityResource(t, rm.Resource)
	if len(rm.ScopeMetrics) != 1 || rm.ScopeMetrics[0].Metrics[0].Name != "orders.created" {
		t.Errorf("metrics = %+v", rm.ScopeMetrics)
	}

	if err := tel.ForceFlush(t.Context()); err != nil {
		t.Errorf("ForceFlush: %v", err)
	}
	shutdown(t, tel)
	if err := tel.Shutdown(t.Context()); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}

func TestSetupStdout(t *testing.T) {
	var buf bytes.Buffer
	tel, err := observability.Setup(t.Context(), observability.Config{
		Identity: testIdentity(t),
		Traces:   observability.ExporterStdout,
		Metrics:  observability.ExporterStdout,
		Writer:   &buf,
	})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.TracerProvider().Tracer("test").Start(t.Context(), "stdout-span")
	span.End()
	counter, err := tel.MeterProvider().Meter("test").Int64Counter("stdout.counter")
	if err != nil {
		t.Fatal(err)
	}
	counter.Add(t.Context(), 1)
	shutdown(t, tel)

	out := buf.String()
	for _, want := range []string{"stdout-span", "stdout.counter", "orders-7d9f-abcde"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout output lacks %q:\n%s", want, out)
		}
	}
}

func TestSetupPrometheus(t *testing.T) {
	tel, err := observability.Setup(t.Context(), observability.Config{
		Identity: testIdentity(t),
		Metrics:  observability.ExporterPrometheus,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(t, tel)
	counter, err := tel.MeterProvider().Meter("test").Int64Counter("orders.created")
	if err != nil {
		t.Fatal(err)
	}
	counter.Add(t.Context(), 3)

	h := tel.MetricsHandler()
	if h == nil {
		t.Fatal("MetricsHandler is nil")
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/metrics", nil))
	if w.Code != http.StatusOK {
		t.Fatalf("status %d", w.Code)
	}
	body := w.Body.String()
	if !strings.Contains(body, "orders_created_total") || !strings.Contains(body, "} 3") {
		t.Errorf("metrics lack orders_created_total 3:\n%s", body)
	}
	if !strings.Contains(body, `service_instance_id="orders-7d9f-abcde"`) {
		t.Errorf("target_info lacks the instance id:\n%s", body)
	}

	// The process-wide default registry is untouched.
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "orders_created") {
			t.Errorf("metric %s registered in the default registry", mf.GetName())
		}
	}
}

func TestSetupPrometheusOwnRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	tel, err := observability.Setup(t.Context(), observability.Config{
		Identity:           testIdentity(t),
		Metrics:            observability.ExporterPrometheus,
		PrometheusRegistry: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(t, tel)
	counter, _ := tel.MeterProvider().Meter("test").Int64Counter("jobs.done")
	counter.Add(t.Context(), 1)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		found = found || mf.GetName() == "jobs_done_total"
	}
	if !found {
		t.Error("jobs_done_total not in the given registry")
	}
}

// otlpReceiver is an OTLP/HTTP receiver that decodes trace exports.
type otlpReceiver struct {
	mu     sync.Mutex
	paths  []string
	traces []*coltracepb.ExportTraceServiceRequest
}

func (o *otlpReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.paths = append(o.paths, r.Method+" "+r.URL.Path)
	if r.URL.Path == "/v1/traces" {
		req := new(coltracepb.ExportTraceServiceRequest)
		if err := proto.Unmarshal(body, req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		o.traces = append(o.traces, req)
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.WriteHeader(http.StatusOK)
}

func (o *otlpReceiver) check(t *testing.T, spanName string) {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	if !contains(o.paths, "POST /v1/traces") || !contains(o.paths, "POST /v1/metrics") {
		t.Fatalf("receiver got %v, want traces and metrics", o.paths)
	}
	var names []string
	var instance string
	for _, req := range o.traces {
		for _, rs := range req.GetResourceSpans() {
			for _, kv := range rs.GetResource().GetAttributes() {
				if kv.GetKey() == "service.instance.id" {
					instance = kv.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					names = append(names, s.GetName())
				}
			}
		}
	}
	if !contains(names, spanName) {
		t.Errorf("exported spans %v lack %q", names, spanName)
	}
	if instance != "orders-7d9f-abcde" {
		t.Errorf("exported resource instance id = %q", instance)
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func exportOne(t *testing.T, tel *observability.Telemetry, spanName string) {
	t.Helper()
	_, span := tel.TracerProvider().Tracer("test").Start(t.Context(), spanName)
	span.End()
	counter, err := tel.MeterProvider().Meter("test").Int64Counter("exported.counter")
	if err != nil {
		t.Fatal(err)
	}
	counter.Add(t.Context(), 1)
	shutdown(t, tel)
}

// TestSetupOTLPHTTPFromEnvironment proves the standard variable is honoured:
// the only place the receiver's address appears is OTEL_EXPORTER_OTLP_ENDPOINT.
func TestSetupOTLPHTTPFromEnvironment(t *testing.T) {
	recv := &otlpReceiver{}
	srv := httptest.NewServer(recv)
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)

	tel, err := observability.Setup(t.Context(), observability.Config{
		Identity: testIdentity(t),
		Traces:   observability.ExporterOTLPHTTP,
		Metrics:  observability.ExporterOTLPHTTP,
	})
	if err != nil {
		t.Fatal(err)
	}
	exportOne(t, tel, "from-env")
	recv.check(t, "from-env")
}

func TestSetupOTLPHTTPEndpointOption(t *testing.T) {
	recv := &otlpReceiver{}
	srv := httptest.NewServer(recv)
	defer srv.Close()

	tel, err := observability.Setup(t.Context(), observability.Config{
		Identity:     testIdentity(t),
		Traces:       observability.ExporterOTLPHTTP,
		Metrics:      observability.ExporterOTLPHTTP,
		OTLPEndpoint: srv.URL,
	})
	if err != nil {
		t.Fatal(err)
	}
	exportOne(t, tel, "from-option")
	recv.check(t, "from-option")
}

// grpcReceiver is an OTLP/gRPC receiver for traces and metrics.
type grpcReceiver struct {
	coltracepb.UnimplementedTraceServiceServer
	mu      sync.Mutex
	names   []string
	metrics []string
}

func (g *grpcReceiver) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				g.names = append(g.names, s.GetName())
			}
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

type grpcMetricsReceiver struct {
	colmetricpb.UnimplementedMetricsServiceServer
	g *grpcReceiver
}

func (m grpcMetricsReceiver) Export(_ context.Context, req *colmetricpb.ExportMetricsServiceRequest) (*colmetricpb.ExportMetricsServiceResponse, error) {
	m.g.mu.Lock()
	defer m.g.mu.Unlock()
	for _, rm := range req.GetResourceMetrics() {
		for _, sm := range rm.GetScopeMetrics() {
			for _, x := range sm.GetMetrics() {
				m.g.metrics = append(m.g.metrics, x.GetName())
			}
		}
	}
	return &colmetricpb.ExportMetricsServiceResponse{}, nil
}

func TestSetupOTLPGRPC(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	recv := &grpcReceiver{}
	gs := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(gs, recv)
	colmetricpb.RegisterMetricsServiceServer(gs, grpcMetricsReceiver{g: recv})
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	defer func() {
		gs.Stop()
		if err := <-served; err != nil {
			t.Errorf("grpc Serve: %v", err)
		}
	}()

	tel, err := observability.Setup(t.Context(), observability.Config{
		Identity:     testIdentity(t),
		Traces:       observability.ExporterOTLPGRPC,
		Metrics:      observability.ExporterOTLPGRPC,
		OTLPEndpoint: "http://" + lis.Addr().String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	exportOne(t, tel, "over-grpc")

	recv.mu.Lock()
	defer recv.mu.Unlock()
	if !contains(recv.names, "over-grpc") {
		t.Errorf("grpc receiver got spans %v", recv.names)
	}
	if !contains(recv.metrics, "exported.counter") {
		t.Errorf("grpc receiver got metrics %v", recv.metrics)
	}
}

func TestSetupInvalidConfig(t *testing.T) {
	id := testIdentity(t)
	tests := []struct {
		name    string
		cfg     observability.Config
		wantErr error
		wantMsg string
	}{
		{name: "unknown traces exporter", cfg: observability.Config{Identity: id, Traces: "zipkin"}, wantErr: observability.ErrUnknownExporter, wantMsg: `traces exporter "zipkin"`},
		{name: "unknown metrics exporter", cfg: observability.Config{Identity: id, Metrics: "OTLP"}, wantErr: observability.ErrUnknownExporter, wantMsg: `metrics exporter "OTLP"`},
		{name: "prometheus traces", cfg: observability.Config{Identity: id, Traces: observability.ExporterPrometheus}, wantErr: observability.ErrInvalidConfig, wantMsg: "metrics only"},
		{name: "zero identity", cfg: observability.Config{}, wantErr: observability.ErrInvalidIdentity, wantMsg: "no identity"},
		{name: "negative interval", cfg: observability.Config{Identity: id, MetricInterval: -time.Second}, wantErr: observability.ErrInvalidConfig, wantMsg: "negative"},
		{name: "nil span processor", cfg: observability.Config{Identity: id, SpanProcessors: []sdktrace.SpanProcessor{nil}}, wantErr: observability.ErrInvalidConfig, wantMsg: "nil span processor"},
		{name: "otlp endpoint without scheme", cfg: observability.Config{Identity: id, Traces: observability.ExporterOTLPHTTP, OTLPEndpoint: "collector:4318"}, wantErr: observability.ErrInvalidConfig, wantMsg: "otlp endpoint"},
		{name: "nil metric reader", cfg: observability.Config{Identity: id, MetricReaders: []sdkmetric.Reader{nil}}, wantErr: observability.ErrInvalidConfig, wantMsg: "nil metric reader"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tel, err := observability.Setup(t.Context(), tt.cfg)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("err = %q, want it to mention %q", err, tt.wantMsg)
			}
			if tel != nil {
				t.Error("Telemetry returned with an error")
			}
		})
	}
}

func TestSetupSetGlobal(t *testing.T) {
	t.Cleanup(func() {
		otel.SetTracerProvider(tracenoop.NewTracerProvider())
		otel.SetMeterProvider(metricnoop.NewMeterProvider())
		otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator())
	})
	tel, err := observability.Setup(t.Context(), observability.Config{Identity: testIdentity(t), SetGlobal: true})
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(t, tel)
	if otel.GetTracerProvider() != tel.TracerProvider() {
		t.Error("global tracer provider not set")
	}
	if otel.GetMeterProvider() != tel.MeterProvider() {
		t.Error("global meter provider not set")
	}
	fields := otel.GetTextMapPropagator().Fields()
	if !contains(fields, "traceparent") || !contains(fields, "baggage") {
		t.Errorf("global propagator fields = %v", fields)
	}
}

// TestSetupInvalidEndpointHidesCredentials: an OTLP endpoint Setup refuses
// is named in the error without the password it may carry, since the error
// goes to the logs of a service that fails to start.
func TestSetupInvalidEndpointHidesCredentials(t *testing.T) {
	for _, endpoint := range []string{
		"grpc://collector:s3cret@otel.example:4317", // parses, wrong scheme
		"https://collector:s3cret@[::1",             // does not parse
		"https://collector:s3cret@",                 // no host
	} {
		_, err := observability.Setup(t.Context(), observability.Config{
			Identity: testIdentity(t), Traces: observability.ExporterOTLPGRPC, OTLPEndpoint: endpoint,
		})
		if !errors.Is(err, observability.ErrInvalidConfig) {
			t.Fatalf("%s: err = %v, want ErrInvalidConfig", endpoint, err)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("the error shows the endpoint's password: %v", err)
		}
	}
}

// stuckSpanProcessor stands for a trace exporter whose collector does not
// answer: its Shutdown holds on until ctx ends.
type stuckSpanProcessor struct{ sdktrace.SpanProcessor }

func (stuckSpanProcessor) Shutdown(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}

// flushExporter is a metric exporter that records the state of the context
// of its export at Shutdown, then ends it.
type flushExporter struct {
	cancel context.CancelFunc
	ctxErr chan error
}

func (e *flushExporter) Export(ctx context.Context, _ *metricdata.ResourceMetrics) error {
	select {
	case e.ctxErr <- ctx.Err():
	default:
	}
	e.cancel()
	return nil
}

func (e *flushExporter) Temporality(k sdkmetric.InstrumentKind) metricdata.Temporality {
	return sdkmetric.DefaultTemporalitySelector(k)
}

func (e *flushExporter) Aggregation(k sdkmetric.InstrumentKind) sdkmetric.Aggregation {
	return sdkmetric.DefaultAggregationSelector(k)
}

func (e *flushExporter) Shutdown(context.Context) error   { return nil }
func (e *flushExporter) ForceFlush(context.Context) error { return nil }

// TestShutdownFlushesMetricsBesideStuckTraces: Shutdown's deadline is shared
// by traces and metrics. A trace exporter that takes all of it (its collector
// is down) must not leave the metrics' last flush a context already ended.
func TestShutdownFlushesMetricsBesideStuckTraces(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	exp := &flushExporter{cancel: cancel, ctxErr: make(chan error, 1)}
	tel, err := observability.Setup(context.Background(), observability.Config{
		Identity:       testIdentity(t),
		SpanProcessors: []sdktrace.SpanProcessor{stuckSpanProcessor{sdktrace.NewSimpleSpanProcessor(tracetest.NewInMemoryExporter())}},
		MetricReaders:  []sdkmetric.Reader{sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(time.Hour))},
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = tel.Shutdown(ctx)
	select {
	case err := <-exp.ctxErr:
		if err != nil {
			t.Fatalf("the last metrics were exported with a context already ended (%v): the traces took the whole deadline", err)
		}
	default:
		t.Fatal("the last metrics were never exported: the traces took the whole deadline")
	}
}

// stuckFlushProcessor stands for a trace exporter whose collector does not
// answer: its ForceFlush holds on until ctx ends.
type stuckFlushProcessor struct{ sdktrace.SpanProcessor }

func (stuckFlushProcessor) ForceFlush(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}

// TestForceFlushMetricsBesideStuckTraces: as for Shutdown, a trace exporter
// that takes all of ForceFlush's deadline must not leave the metrics' flush
// a context already ended.
func TestForceFlushMetricsBesideStuckTraces(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	exp := &flushExporter{cancel: cancel, ctxErr: make(chan error, 1)}
	tel, err := observability.Setup(context.Background(), observability.Config{
		Identity:       testIdentity(t),
		SpanProcessors: []sdktrace.SpanProcessor{stuckFlushProcessor{sdktrace.NewSimpleSpanProcessor(tracetest.NewInMemoryExporter())}},
		MetricReaders:  []sdkmetric.Reader{sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(time.Hour))},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(t, tel)
	_ = tel.ForceFlush(ctx)
	select {
	case err := <-exp.ctxErr:
		if err != nil {
			t.Fatalf("the metrics were flushed with a context already ended (%v): the traces took the whole deadline", err)
		}
	default:
		t.Fatal("the metrics were never flushed: the traces took the whole deadline")
	}
}
