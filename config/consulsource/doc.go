// Package consulsource is a config.Source over Consul KV: one key holding a
// whole document (YAML, JSON or TOML), or a prefix whose keys are the
// configuration's keys. It watches with blocking queries, so a change
// written once to Consul reaches every instance of the fleet in
// milliseconds, and it keeps the last good layer while Consul is away.
//
// It is a leaf package so that the core config package does not import the
// Consul client.
package consulsource
