// Package consul is the discovery registry on HashiCorp Consul
// (github.com/hashicorp/consul/api): registration with a TTL heartbeat,
// health watches through blocking queries, and leader election over a
// Consul lock.
//
// # Why it exists
//
// In an active-active fleet any instance can die at any time, and callers
// must stop routing to it at once. This package makes each instance's
// health visible in Consul and follows it:
//
//   - Registry.Register registers the instance under its own ID with a TTL
//     check that the returned Registration's heartbeat goroutine passes
//     every TTL/3. A process that dies stops the heartbeat, its check turns
//     critical after one TTL, and watchers drop it;
//     DeregisterCriticalServiceAfter then removes it from the catalog. An
//     optional HTTP check probes the readiness endpoint as well. When the
//     agent forgets the service (a restarted agent loses its state), the
//     heartbeat's update is refused and the heartbeat registers the
//     service again. A first registration that fails without the agent's
//     answer (the caller's deadline, a dropped connection) may have been
//     applied all the same, so Register deregisters it before returning
//     the error. Registration.SetCritical takes the instance out of
//     rotation at once, the first step of a graceful drain.
//     Registration.SetMeta changes the instance's Meta while it runs (the
//     configuration hash after a run-time change), keeping its checks'
//     status, and every later re-registration sends it.
//   - Resolver.Watch follows the passing instances of a service through
//     blocking queries on /v1/health/service (package internal/consulwatch):
//     the first result is delivered even when empty, an empty list is a real
//     event (removals are never lost), an index that goes backwards or is 0
//     resets the query, errors back off with jitter and never spin, and a
//     failed refresh keeps the last known good list, delivered with its
//     age and the error.
//   - Leader.Lead elects one instance through a Consul lock (as api.Lock
//     takes one, with every query bound to its context) and a session of its
//     own, cancels the leader's context the moment the lock is lost, and
//     hands out the lock's ModifyIndex as a fencing token.
//
// None of these start goroutines outside the values that own them: the
// heartbeat belongs to the Registration (stopped by Close), a watch runs on
// the caller's goroutine, and a Leader's helpers end before Lead returns.
package consul
