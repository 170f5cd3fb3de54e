// Package observability gives every instance one identity and correlates
// its logs, traces and metrics.
//
// Status: being built (see the retry and observability issue).
package observability
