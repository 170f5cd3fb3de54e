// Package consulwatch runs a Consul blocking query in a loop and delivers
// each new result, for the packages that watch Consul (config's KV source,
// discovery's health watches).
//
// In an active-active fleet every instance watches the same keys and
// services, so a watch that misbehaves misbehaves N times at once: a loop
// that spins when Consul is down multiplies the load on the agent that is
// trying to come back, and a loop that drops an empty result keeps routing to
// instances that are gone. Run follows Consul's blocking-query rules
// (https://developer.hashicorp.com/consul/api-docs/features/blocking):
//
//   - the first result is always delivered, even an empty one: an empty list
//     is a real event;
//   - afterwards a result is delivered only when its index differs from the
//     last delivered one, so a query that timed out unchanged is not
//     redelivered;
//   - an index that goes backwards (a restarted agent, a snapshot restore)
//     resets the next query to a non-blocking one, and the result is
//     delivered, since the state it describes is new;
//   - an index of 0 is treated as 1 for the next query, and the loop backs
//     off, since a 0 index would otherwise make every query return at once;
//   - an error keeps the last delivered result (nothing is delivered), backs
//     off with jitter, growing and capped, and makes the next query
//     non-blocking, because a restarted agent may have a lower index and a
//     blocking query with the old one would hang until the wait time ends;
//   - two queries never start less than MinInterval apart, whatever the
//     server answers: the loop cannot spin.
//
// Run starts no goroutine: it loops on the caller's goroutine and calls
// deliver from it, in order, until ctx ends.
package consulwatch
