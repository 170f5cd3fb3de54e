// Package health tells the load balancer when an instance can take traffic
// and drains it on shutdown so that a rolling update drops no request.
//
// In an active-active service any instance may be starting, stopping or cut
// off from a dependency at any moment, while its siblings carry the load.
// Two things then decide whether users see errors: that the orchestrator and
// the load balancer ask each instance the right question, and that an
// instance leaving the fleet stops taking new requests before it stops
// answering the ones it has. This package does both.
//
// # Checks and views
//
// A Registry holds the checks of one instance. Each Check has a name
// ("componentName:measurementName"), a function, a timeout, a caching
// interval and the views it gates. There are three views, one for each
// question an orchestrator asks:
//
//   - Liveness: is the process stuck beyond repair? A fail restarts the
//     instance, so no dependency check belongs here: a database outage
//     would otherwise restart the whole fleet at once. No check gates
//     liveness unless registered for it (a deadlock detector, say).
//   - Readiness: may the load balancer send traffic here? Dependency checks
//     gate it by default. It also fails while the instance is starting or
//     draining, whatever the checks say.
//   - Startup: has the instance finished starting? It fails until
//     MarkStarted, then reports the startup checks; until those have passed
//     once, they gate readiness too.
//
// A warn (Warn(err) from a check, or Result.Status) never fails a view: an
// instance whose last configuration reload was rejected keeps serving with
// the last good configuration, and says so.
//
// Registry.Handler serves a view as application/health+json, following the
// IETF draft "Health Check Response Format for HTTP APIs"
// (draft-inadarei-api-health-check): 200 for pass and warn, 503 for fail.
// The top level carries status, version and serviceId (from an Identity
// such as observability.Identity), releaseId, description, notes, output,
// checks, and one extension, configHash, the hash of the instance's
// effective configuration, so that drift across the fleet is visible.
//
// Checks of one view run concurrently, each bounded by its timeout (a check
// that ignores ctx still reports fail at its timeout, and is not started
// again until it returns). A result is reused for the check's interval, and
// concurrent probes share one run, so a herd of probes from many load
// balancers costs a dependency one call per interval. A check that panics
// reports fail. Checks of Redis, MongoDB, Kafka and Consul live beside
// their clients, so this package imports no vendor code.
//
// # The lifecycle
//
// Lifecycle.Run runs the HTTP servers of an instance from start to stop:
// Starting (listen, OnStarted hooks, MarkStarted), Ready, then on SIGTERM,
// SIGINT or the end of ctx: Draining (readiness fails at once, OnDrain hooks
// make the Consul check critical, the drain delay gives load balancers and
// clients time to notice while requests are still served), Shutdown
// (http.Server.Shutdown waits for requests in flight up to a deadline), and
// Stopped (closers run in reverse order: deregister, flush telemetry, close
// clients). Run checks before it starts that the drain delay, shutdown
// timeout and close timeout fit the termination grace period. A second
// SIGTERM or SIGINT during the stop is not caught: it kills the process at
// once, for an operator who wants it down now.
//
// Time comes from a Clock (WithClock), so tests step timeouts, caching and
// the drain delay without sleeping.
package health
