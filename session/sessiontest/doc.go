// Package sessiontest is the conformance suite every session store runs.
//
// Status: being built.
package sessiontest
