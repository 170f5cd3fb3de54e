// Package config gives every instance of a fleet the same typed
// configuration, changeable at run time, and rejects a bad change without
// taking the fleet down.
//
// In an active-active service N identical instances serve at once, so a
// configuration change reaches all of them together: a change that crashes
// or wedges one instance crashes or wedges them all. A Store therefore
// applies a change only when every step of one pipeline passes:
//
//	fetch → merge → strict decode → validate → diff → restart check → swap → notify
//
// Sources are layered in order over the defaults: files (YAML, JSON, TOML),
// environment variables with a prefix, and Consul KV (package
// config/consulsource), watched with blocking queries. Parsing and merging
// use koanf; decoding is strict (an unknown key or a value of the wrong type
// is an error, so a typo is refused rather than silently ignored, and a
// duration needs its unit: "30s", not 30, which would be 30 nanoseconds).
// Validation is T's Validate method and Options.Validate. Fields tagged
// `config:"restart"` take any value at boot but are refused at run time,
// since the running process could not honour them.
//
// A change that fails anywhere keeps the last good snapshot, and says so:
// LastError, a log line, the activekit.config.changes.rejected counter, and
// Status at level warn (never fail: a bad push reaching every instance must
// not empty the load balancer).
//
// Readers call Load, which is one atomic pointer read: no lock, and never a
// half-applied change. Subscribers get the old and new value after each
// swap, in order. Hash identifies the effective configuration (a SHA-256 of
// its canonical JSON, secrets by a slow salted derivation), the same on
// every instance that runs the same configuration: report it in health
// output, in the Consul service meta and, through the activekit.config.info
// gauge, in metrics, and drift across the fleet is one query away.
//
// Secret holds passwords and tokens: it decodes from any source and never
// prints.
package config
