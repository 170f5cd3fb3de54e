// Package activetest runs a fleet of in-process instances of a service behind
// a balancer, with faults, so that a service author can prove in go test that
// the service survives the loss of an instance.
//
// Status: not started.
package activetest
