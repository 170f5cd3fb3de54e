package observability

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/exporters/stdout/stdoutmetric"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Exporter names where Setup sends traces or metrics. Its values are plain
// strings so they can come from configuration files and the environment.
type Exporter string

// The exporters Setup knows.
const (
	// ExporterNone exports nothing. The empty Exporter means the same.
	// Spans still get trace and span IDs, so logs are still correlated
	// and trace context still propagates to other instances.
	ExporterNone Exporter = "none"
	// ExporterOTLPGRPC sends OTLP over gRPC. Endpoint, headers, TLS,
	// timeout and compression come from the standard OTEL_EXPORTER_OTLP_*
	// environment variables unless Config.OTLPEndpoint is set.
	ExporterOTLPGRPC Exporter = "otlp-grpc"
	// ExporterOTLPHTTP sends OTLP over HTTP with protobuf, configured like
	// ExporterOTLPGRPC.
	ExporterOTLPHTTP Exporter = "otlp-http"
	// ExporterStdout writes human-readable JSON to Config.Writer, for
	// development.
	ExporterStdout Exporter = "stdout"
	// ExporterPrometheus serves metrics for scraping through
	// Telemetry.MetricsHandler. Metrics only.
	ExporterPrometheus Exporter = "prometheus"
)

// ErrUnknownExporter is returned, wrapped with the exporter name, by Setup
// for an Exporter it does not know.
var ErrUnknownExporter = errors.New("unknown exporter")

// ErrInvalidConfig is returned, wrapped with the reason, by Setup for a
// Config it cannot build.
var ErrInvalidConfig = errors.New("observability: invalid config")

// Config says what Setup builds. The zero value (plus an Identity) builds
// providers that export nothing, log nothing and change no global state.
type Config struct {
	// Identity becomes the resource of every span and metric. Required.
	Identity Identity

	// Traces and Metrics choose the exporters. Empty means ExporterNone.
	// ExporterPrometheus is valid for Metrics only.
	Traces  Exporter
	Metrics Exporter

	// OTLPEndpoint, when set, is the base URL of the OTLP receiver for
	// both signals, with the meaning of OTEL_EXPORTER_OTLP_ENDPOINT: for
	// HTTP "http://collector:4318" sends to /v1/traces and /v1/metrics
	// under it; for gRPC "http://collector:4317" (an "http" scheme means
	// no TLS). It overrides the environment variables for the endpoint
	// only; headers, timeout, TLS and compression still come from them.
	// Empty leaves the endpoint to OTEL_EXPORTER_OTLP_ENDPOINT and its
	// per-signal variants, defaulting to localhost.
	OTLPEndpoint string

	// Writer receives the output of ExporterStdout. Nil means os.Stdout.
	// Setup serialises writes from both signals.
	Writer io.Writer

	// PrometheusRegistry receives the metrics of ExporterPrometheus. Nil
	// means a new, dedicated registry: never the process-wide default.
	PrometheusRegistry *prometheus.Registry

	// MetricInterval is how often push exporters (OTLP, stdout) export
	// metrics. Zero means OTEL_METRIC_EXPORT_INTERVAL, else 60s.
	MetricInterval time.Duration

	// Sampler decides which traces are recorded. Nil means
	// ParentBased(AlwaysSample): keep what the caller kept.
	Sampler sdktrace.Sampler

	// SpanProcessors and MetricReaders are added to the providers next to
	// the chosen exporters, for example tracetest.NewSpanRecorder() and
	// sdkmetric.NewManualReader() in tests. Setup shuts them down with the
	// providers.
	SpanProcessors []sdktrace.SpanProcessor
	MetricReaders  []sdkmetric.Reader

	// SetGlobal, when true, installs the tracer provider, meter provider
	// and propagator as the otel globals, so instrumentation that uses
	// the globals (and Providers{} left empty) reports through them.
	// Shutdown does not undo it. False leaves the globals alone.
	SetGlobal bool
}

// Telemetry holds the providers Setup built. Its methods are safe for
// concurrent use.
type Telemetry struct {
	tp         *sdktrace.TracerProvider
	mp         *sdkmetric.MeterProvider
	propagator propagation.TextMapPropagator
	res        *resource.Resource
	metrics    http.Handler

	shutdownOnce sync.Once
	shutdownErr  error
}

// Setup builds a tracer provider and a meter provider that describe the
// instance with cfg.Identity and export as cfg says, and a W3C Trace Context
// plus Baggage propagator. ctx bounds the construction of the exporters only.
//
// The batch span processor and, for OTLP and stdout metrics, the periodic
// metric reader each run one goroutine; Telemetry.Shutdown stops them. Call
// Shutdown on the way out, after the HTTP server has drained, so the last
// spans are flushed.
//
// Setup sets no otel global unless cfg.SetGlobal is true, and exports and
// logs nothing unless cfg asks for an exporter.
func Setup(ctx context.Context, cfg Config) (*Telemetry, error) {
	if cfg.Identity.IsZero() {
		return nil, fmt.Errorf("%w: config has no identity", ErrInvalidIdentity)
	}
	if err := cfg.Identity.validate(); err != nil {
		return nil, err
	}
	traces, err := checkExporter("traces", cfg.Traces)
	if err != nil {
		return nil, err
	}
	if traces == ExporterPrometheus {
		return nil, fmt.Errorf("%w: traces exporter %q: prometheus exports metrics only", ErrInvalidConfig, cfg.Traces)
	}
	metrics, err := checkExporter("metrics", cfg.Metrics)
	if err != nil {
		return nil, err
	}
	if cfg.MetricInterval < 0 {
		return nil, fmt.Errorf("%w: negative metric interval %v", ErrInvalidConfig, cfg.MetricInterval)
	}
	if cfg.OTLPEndpoint != "" {
		u, err := url.Parse(cfg.OTLPEndpoint)
		if err != nil {
			// url.Parse's error quotes the whole string, password included.
			return nil, fmt.Errorf("%w: otlp endpoint is not a URL: want an http or https URL with a host", ErrInvalidConfig)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("%w: otlp endpoint %q: want an http or https URL with a host", ErrInvalidConfig, u.Redacted())
		}
	}
	for _, sp := range cfg.SpanProcessors {
		if sp == nil {
			return nil, fmt.Errorf("%w: nil span processor", ErrInvalidConfig)
		}
	}
	for _, r := range cfg.MetricReaders {
		if r == nil {
			return nil, fmt.Errorf("%w: nil metric reader", ErrInvalidConfig)
		}
	}

	var w io.Writer
	if traces == ExporterStdout || metrics == ExporterStdout {
		w = cfg.Writer
		if w == nil {
			w = os.Stdout
		}
		w = &syncWriter{w: w}
	}

	res := cfg.Identity.Resource()
	t := &Telemetry{propagator: W3C(), res: res}

	spanExp, err := newSpanExporter(ctx, traces, cfg, w)
	if err != nil {
		return nil, err
	}
	reader, handler, err := newMetricReader(ctx, metrics, cfg, w)
	if err != nil {
		if spanExp != nil {
			err = errors.Join(err, spanExp.Shutdown(ctx))
		}
		return nil, err
	}
	t.metrics = handler

	sampler := cfg.Sampler
	if sampler == nil {
		sampler = sdktrace.ParentBased(sdktrace.AlwaysSample())
	}
	topts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res), sdktrace.WithSampler(sampler)}
	if spanExp != nil {
		topts = append(topts, sdktrace.WithBatcher(spanExp))
	}
	for _, sp := range cfg.SpanProcessors {
		topts = append(topts, sdktrace.WithSpanProcessor(sp))
	}
	t.tp = sdktrace.NewTracerProvider(topts...)

	mopts := []sdkmetric.Option{sdkmetric.WithResource(res)}
	if reader != nil {
		mopts = append(mopts, sdkmetric.WithReader(reader))
	}
	for _, r := range cfg.MetricReaders {
		mopts = append(mopts, sdkmetric.WithReader(r))
	}
	t.mp = sdkmetric.NewMeterProvider(mopts...)

	if cfg.SetGlobal {
		otel.SetTracerProvider(t.tp)
		otel.SetMeterProvider(t.mp)
		otel.SetTextMapPropagator(t.propagator)
	}
	return t, nil
}

func checkExporter(signal string, e Exporter) (Exporter, error) {
	switch e {
	case "", ExporterNone:
		return ExporterNone, nil
	case ExporterOTLPGRPC, ExporterOTLPHTTP, ExporterStdout, ExporterPrometheus:
		return e, nil
	}
	return "", fmt.Errorf("observability: %s exporter %q: %w (want none, otlp-grpc, otlp-http, stdout or prometheus)", signal, e, ErrUnknownExporter)
}

// signalURL appends the per-signal path to a base OTLP/HTTP endpoint, as the
// exporters do for OTEL_EXPORTER_OTLP_ENDPOINT.
func signalURL(base, signalPath string) string {
	return strings.TrimRight(base, "/") + signalPath
}

func newSpanExporter(ctx context.Context, e Exporter, cfg Config, w io.Writer) (sdktrace.SpanExporter, error) {
	var (
		exp sdktrace.SpanExporter
		err error
	)
	switch e {
	case ExporterNone:
		return nil, nil
	case ExporterOTLPGRPC:
		var opts []otlptracegrpc.Option
		if cfg.OTLPEndpoint != "" {
			opts = append(opts, otlptracegrpc.WithEndpointURL(cfg.OTLPEndpoint))
		}
		exp, err = otlptracegrpc.New(ctx, opts...)
	case ExporterOTLPHTTP:
		var opts []otlptracehttp.Option
		if cfg.OTLPEndpoint != "" {
			opts = append(opts, otlptracehttp.WithEndpointURL(signalURL(cfg.OTLPEndpoint, "/v1/traces")))
		}
		exp, err = otlptracehttp.New(ctx, opts...)
	case ExporterStdout:
		exp, err = stdouttrace.New(stdouttrace.WithWriter(w))
	}
	if err != nil {
		return nil, fmt.Errorf("observability: traces exporter %s: %w", e, err)
	}
	return exp, nil
}

func newMetricReader(ctx context.Context, e Exporter, cfg Config, w io.Writer) (sdkmetric.Reader, http.Handler, error) {
	var (
		exp sdkmetric.Exporter
		err error
	)
	switch e {
	case ExporterNone:
		return nil, nil, nil
	case ExporterPrometheus:
		reg := cfg.PrometheusRegistry
		if reg == nil {
			reg = prometheus.NewRegistry()
		}
		pexp, err := otelprom.New(otelprom.WithRegisterer(reg))
		if err != nil {
			return nil, nil, fmt.Errorf("observability: metrics exporter %s: %w", e, err)
		}
		return pexp, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), nil
	case ExporterOTLPGRPC:
		var opts []otlpmetricgrpc.Option
		if cfg.OTLPEndpoint != "" {
			opts = append(opts, otlpmetricgrpc.WithEndpointURL(cfg.OTLPEndpoint))
		}
		exp, err = otlpmetricgrpc.New(ctx, opts...)
	case ExporterOTLPHTTP:
		var opts []otlpmetrichttp.Option
		if cfg.OTLPEndpoint != "" {
			opts = append(opts, otlpmetrichttp.WithEndpointURL(signalURL(cfg.OTLPEndpoint, "/v1/metrics")))
		}
		exp, err = otlpmetrichttp.New(ctx, opts...)
	case ExporterStdout:
		exp, err = stdoutmetric.New(stdoutmetric.WithWriter(w))
	}
	if err != nil {
		return nil, nil, fmt.Errorf("observability: metrics exporter %s: %w", e, err)
	}
	var ropts []sdkmetric.PeriodicReaderOption
	if cfg.MetricInterval > 0 {
		ropts = append(ropts, sdkmetric.WithInterval(cfg.MetricInterval))
	}
	return sdkmetric.NewPeriodicReader(exp, ropts...), nil, nil
}

// TracerProvider returns the tracer provider. It stays usable after
// Shutdown, but then records nothing.
func (t *Telemetry) TracerProvider() *sdktrace.TracerProvider { return t.tp }

// MeterProvider returns the meter provider.
func (t *Telemetry) MeterProvider() *sdkmetric.MeterProvider { return t.mp }

// Propagator returns the W3C Trace Context plus Baggage propagator.
func (t *Telemetry) Propagator() propagation.TextMapPropagator { return t.propagator }

// Resource returns the resource every span and metric carries.
func (t *Telemetry) Resource() *resource.Resource { return t.res }

// Providers returns the providers and propagator for Middleware,
// NewTransport and other instrumentation.
func (t *Telemetry) Providers() Providers {
	return Providers{TracerProvider: t.tp, MeterProvider: t.mp, Propagator: t.propagator}
}

// MetricsHandler returns the handler that serves the metrics in the
// Prometheus exposition format, to mount at /metrics, when Config.Metrics is
// ExporterPrometheus, and nil otherwise.
func (t *Telemetry) MetricsHandler() http.Handler { return t.metrics }

// ForceFlush exports all finished spans and the current metrics now. ctx
// bounds the flush; the two providers flush at once, as in Shutdown.
func (t *Telemetry) ForceFlush(ctx context.Context) error {
	return both(ctx, t.tp.ForceFlush, t.mp.ForceFlush)
}

// Shutdown flushes and stops both providers and their exporters, and stops
// the goroutines Setup started. ctx bounds the flush; the two providers
// flush at once, so that one whose collector does not answer leaves the
// other the whole of ctx. It is idempotent: later calls return the result of
// the first. Errors of the two providers are joined.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	t.shutdownOnce.Do(func() { t.shutdownErr = both(ctx, t.tp.Shutdown, t.mp.Shutdown) })
	return t.shutdownErr
}

// both calls traces and metrics at once with ctx, so that one that takes all
// of ctx's time does not leave the other an ended context, and joins their
// errors.
func both(ctx context.Context, traces, metrics func(context.Context) error) error {
	var tErr error
	var wg sync.WaitGroup
	wg.Go(func() { tErr = traces(ctx) })
	mErr := metrics(ctx)
	wg.Wait()
	return errors.Join(tErr, mErr)
}

// syncWriter serialises writes from the span and metric exporters, which
// run on different goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
