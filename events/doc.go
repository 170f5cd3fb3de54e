// Package events publishes an event exactly when a state change commits and
// applies its effect once, whichever instance of the fleet consumes it:
// CloudEvents 1.0 envelopes, Publisher and Subscriber interfaces, and
// middleware for retry, dead-lettering, tracing and dedupe.
//
// Status: being built (see the events issue).
package events
