// Package health tells the load balancer when an instance can take traffic
// and drains it on shutdown so that a rolling update drops no request.
//
// Status: being built (see the discovery and health issue).
package health
