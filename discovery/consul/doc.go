// Package consul is the discovery registry on HashiCorp Consul.
//
// Status: being built.
package consul
