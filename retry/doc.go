// Package retry retries transient faults with backoff and jitter, bounded by
// a retry budget shared across calls.
//
// # Why it exists
//
// In an active-active service every instance is a client of the same shared
// backends (Redis, MongoDB, Kafka, Consul). Those backends fail over, and a
// failover is seen by every instance at the same moment. A retry hides such
// a blip from the user, but it has a cost paid at fleet scale: if N
// instances each retry every failed call up to four times, a dependency that
// is already struggling receives four times its normal load from the whole
// fleet exactly when it can least take it, and a blip becomes an outage.
// That is a retry storm. Nested retries (a handler that retries a client
// that retries) multiply further.
//
// This package keeps retries useful and stops them turning into storms:
//
//   - Exponential backoff with jitter (full by default, or equal or
//     decorrelated) spreads the retries of many clients over time instead of
//     bringing them back in lockstep. The exponential sequence comes from
//     github.com/cenkalti/backoff/v4; the jitter kinds and the rules below
//     are ours.
//   - A Budget lets only a fraction of calls be retried (20% by default,
//     plus a small minimum rate), counted over a sliding window, as
//     Finagle's RetryBudget, Envoy's retry budgets and the Google SRE book
//     recommend. When a dependency fails for everyone the budget is soon
//     spent and calls fail fast with ErrBudgetExhausted, so the extra load
//     from retries stays under about 20% instead of 300%.
//   - Retries are not scheduled when they cannot help: when the context
//     has ended (Do returns at once, even mid-wait), when the next attempt
//     could not start before the context deadline (ErrDeadline), for errors
//     marked Permanent or judged not retryable by the classifier, and (by
//     the default classifier, IsRetryable) for an error that another retry
//     loop already gave up on, so retries happen at one layer only. A
//     Policy.Retryable of your own decides that for itself: call IsRetryable
//     from it to keep the rule.
//   - A server's Retry-After (see ParseRetryAfter and After) is honoured as
//     a floor on the next delay, never as a way around the policy.
//
// # Use
//
// For a one-off call, Do(ctx, Policy{}, fn) or DoValue. For a client of a
// shared backend, make one Retrier with New, a shared Budget and a meter
// provider, and call its Do (or DoValueWith) from every request. Every
// failure ends in an *Error that says how many attempts were made and why
// the loop stopped, and unwraps to the last attempt's error.
//
// Tests inject a Clock (WithClock, BudgetConfig.Clock) so that they never
// sleep.
package retry
