// Package retry retries transient faults with backoff and jitter, bounded by a
// retry budget.
//
// Status: being built (see the retry and observability issue).
package retry
