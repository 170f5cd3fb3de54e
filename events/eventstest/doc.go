// Package eventstest is the conformance suite every Publisher and
// Subscriber pair runs.
//
// Status: being built.
package eventstest
