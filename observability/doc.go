// Package observability gives every instance of an active-active service one
// identity and correlates its logs, traces and metrics.
//
// In an active-active service N identical instances take traffic at once, and
// any of them may die or be replaced at any moment. A single user request
// often crosses several of them: the load balancer sends it to one instance,
// which calls another service, publishes a Kafka event that a third instance
// consumes, and so on. To debug such a request, every signal must say which
// instance produced it and which request it belongs to. This package provides
// the four pieces for that, built on OpenTelemetry:
//
//   - Identity, computed once at boot by NewIdentity: service name, version
//     (from the build information), deployment environment and an instance ID
//     (from ACTIVEKIT_INSTANCE_ID, the Kubernetes pod name, the host name and
//     process id, or a random UUID). It uses the OpenTelemetry semantic
//     convention keys (service.name, service.version, service.instance.id,
//     deployment.environment.name) and is the one identity the other
//     activekit packages use: in the Consul service ID, health output and
//     log lines.
//   - Setup, which builds tracer and meter providers whose resource is that
//     identity, exporting through OTLP (gRPC or HTTP, configured by the
//     standard OTEL_* variables), Prometheus (an http.Handler over a dedicated
//     registry), stdout, or nothing at all, the default. Telemetry.Shutdown
//     flushes them.
//   - NewLogHandler, an slog.Handler wrapper that adds the identity and the
//     current trace_id and span_id to every log record, so that a log line
//     found on one instance leads to the whole distributed trace.
//   - Trace context propagation: Middleware and NewTransport for HTTP (server
//     spans named after the ServeMux route pattern), and Inject, Extract and
//     the carriers Headers and CarrierFuncs for messaging (Kafka record
//     headers, IBM MQ message properties). propagation.MapCarrier from otel
//     serves map-shaped headers.
//
// The package is silent by default: nothing is exported or logged unless the
// configuration asks, and no otel global is set unless Config.SetGlobal is
// true. Instrumentation given an empty Providers uses the otel globals, and
// W3C Trace Context plus Baggage when no global propagator has been set.
package observability
