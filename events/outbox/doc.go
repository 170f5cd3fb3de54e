// Package outbox is a transactional outbox in MongoDB and a relay that is
// safe to run on every instance at once.
//
// Status: not started.
package outbox
