// Package activekit is a set of independent Go packages for building stateless
// active-active services: many identical instances of one service, all taking
// traffic at once behind a load balancer, any of which can die or be replaced
// at any moment without a user noticing.
//
// This package holds no code. It is the overview; the work is done by the
// packages below, which an application imports one by one and wires itself.
// There is no framework, no global state and no god object: a service that
// only needs sessions compiles neither Kafka nor MongoDB.
//
// # Why active-active is hard
//
// With one instance, state can live in memory and a restart is an outage
// everybody expects. With N instances taking traffic at once, a user's
// consecutive requests land on different instances, any instance can vanish
// mid-request, and two instances can write the same record in the same
// millisecond. Everything that must outlive an instance moves to a shared,
// replicated backend, and every interaction with that backend must stay
// correct under concurrency and failure.
//
// # The active-active checklist
//
// Each challenge, and the package that answers it:
//
//   - Session management: a user's session lives outside the instance, and
//     two instances writing it at once lose no update. Package session, with
//     stores for Redis (standalone, Sentinel, Cluster), Memcached and memory.
//   - Data consistency: a write acknowledged to a user survives a database
//     failover, and the user's next request, on any instance, reads it.
//     Package consistency, for MongoDB replica sets and sharded clusters.
//   - Event-driven state changes: an event is published exactly when the state
//     change commits, never lost, and its effect is applied once. Package
//     events, with Kafka and IBM MQ adapters, a transactional outbox and
//     dedupe stores.
//   - Load balancing and service discovery: callers find the healthy
//     instances and route around a dead one at once. Package discovery, with
//     a Consul registry, a power-of-two-choices balancer with outlier
//     ejection, and leader election for singleton work.
//   - Automated failover and rolling updates: the load balancer knows when an
//     instance can take traffic, and a rolling restart drops no request.
//     Package health, with liveness, readiness and startup views and the
//     drain-on-shutdown lifecycle.
//   - Transient faults: retries with backoff and jitter, bounded by a retry
//     budget so that a failing dependency is not buried under a retry storm.
//     Package retry.
//   - Instance synchronization and configuration: every instance runs the same
//     configuration, changeable at run time, and a bad change is rejected
//     without taking the fleet down. Package config.
//   - Monitoring and logging: logs, traces and metrics from N instances are
//     told apart and correlated. Package observability.
//   - Proof: a service author shows in go test that the service survives the
//     loss of an instance. Package activetest.
//
// The examples directory holds services to copy as templates.
package activekit
