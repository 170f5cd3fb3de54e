// Package discovery lets instances of an active-active fleet find each other:
// registration with heartbeats, watches of the healthy instances, a balancer
// that routes around a dead instance at once, and leader election for
// singleton work.
//
// Status: being built (see the discovery and health issue).
package discovery
