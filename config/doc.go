// Package config gives every instance of a fleet the same typed
// configuration, changeable at run time, and rejects a bad change without
// taking the fleet down.
//
// Status: being built (see the config issue).
package config
