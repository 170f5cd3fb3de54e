// Package consistency makes MongoDB writes survive a failover and makes the
// next read, on any instance of the fleet, see them: named consistency
// levels, causal tokens carried between instances, versioned
// compare-and-set, idempotent inserts and retried transactions.
//
// Status: being built (see the consistency issue).
package consistency
