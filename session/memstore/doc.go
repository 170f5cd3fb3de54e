// Package memstore is an in-process session store for tests and
// single-instance use.
//
// Status: being built.
package memstore
