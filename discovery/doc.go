// Package discovery lets the instances of an active-active fleet find each
// other and route around the dead ones at once.
//
// # Why it exists
//
// In an active-active service any instance can die or be replaced at any
// moment, and every other instance that calls it must notice immediately:
// not at the next DNS refresh, not after a minute of timeouts. This package
// holds the vendor-neutral parts of that:
//
//   - Instance, and the Registry, Registration, Resolver and Leader
//     interfaces that registries implement (package discovery/consul over
//     Consul, package discovery/memregistry in memory for tests and the
//     embedded demo). A Registration owns the heartbeat that keeps its
//     instance registered and deregisters it on Close; a Drainer takes it
//     out of rotation first during a graceful shutdown.
//   - Resolver.Watch delivers the full list of healthy instances on every
//     change, empty lists included, and keeps the last known list (with
//     its age and the error) when the registry cannot be reached: an
//     outage of the registry never empties a caller's view of the fleet.
//   - Balancer picks an instance per request by the power of two choices
//     on in-flight requests, and ejects an instance after consecutive
//     failures (at once for a refused or dropped connection, by default)
//     for a time that grows with repeated ejections, never ejecting more
//     than a capped share of the instances.
//   - Transport is an http.RoundTripper that resolves the URL host as a
//     service name (http://orders/...), balances, propagates the trace
//     context, and retries idempotent requests on a different instance
//     within a retry budget (package retry), and any request whose
//     connection could not be made (it never left), so that the loss of an
//     instance costs callers no failed request. Over https it verifies each
//     instance's certificate against the service name, not the address it
//     dials. It watches a service while requests use it: a watch idle for
//     TransportConfig.IdleTimeout is stopped, and at most
//     TransportConfig.MaxServices run at once, so that service names from
//     user input cannot grow them without bound.
//   - Leader runs singleton work on one instance at a time, cancels its
//     context the moment leadership is lost, and hands out a fencing token
//     that grows with every term.
//
// This package imports no vendor client.
package discovery
