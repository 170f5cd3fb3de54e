package observability

import (
	"net/http"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Providers names the OpenTelemetry providers an instrumentation uses. Each
// nil field means the default: the otel global tracer and meter providers
// (resolved at use, so a global set later is honoured), and
// DefaultPropagator for the propagator. Telemetry.Providers returns the ones
// Setup built.
type Providers struct {
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	Propagator     propagation.TextMapPropagator
}

func (p Providers) propagator() propagation.TextMapPropagator {
	if p.Propagator == nil {
		return DefaultPropagator()
	}
	return p.Propagator
}

func (p Providers) otelhttpOptions() []otelhttp.Option {
	opts := []otelhttp.Option{otelhttp.WithPropagators(p.propagator())}
	if p.TracerProvider != nil {
		opts = append(opts, otelhttp.WithTracerProvider(p.TracerProvider))
	}
	if p.MeterProvider != nil {
		opts = append(opts, otelhttp.WithMeterProvider(p.MeterProvider))
	}
	return opts
}

// Middleware returns HTTP server middleware that continues the caller's trace
// from the W3C traceparent header (or whatever p's propagator reads), starts a
// server span around the request and records the OpenTelemetry HTTP server
// metrics (http.server.request.duration and friends).
//
// The span is named "METHOD route" after the route pattern of the Go 1.22+
// ServeMux that served the request, for example "GET /items/{id}", never
// after the raw path, so names stay few however many items there are. This
// works on both sides of the mux: wrapping the whole mux (the pattern is
// only known once the mux has routed, and the span is renamed then) or
// wrapping a single route's handler (the pattern is known at start). A
// request no pattern matched keeps the name "METHOD".
func Middleware(p Providers) func(http.Handler) http.Handler {
	return otelhttp.NewMiddleware("http.server", p.otelhttpOptions()...)
}

// NewTransport returns an http.RoundTripper that starts a client span for
// each request, injects its trace context into the request headers with p's
// propagator, and records the HTTP client metrics. A nil base means
// http.DefaultTransport.
func NewTransport(base http.RoundTripper, p Providers) *otelhttp.Transport {
	if base == nil {
		base = http.DefaultTransport
	}
	return otelhttp.NewTransport(base, p.otelhttpOptions()...)
}
