package config

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors, matched with errors.Is on the error of New, Reload and
// LastError.
var (
	// ErrInvalidOptions is wrapped by New for Options it cannot use.
	ErrInvalidOptions = errors.New("config: invalid options")
	// ErrSource means a source could not be read or parsed.
	ErrSource = errors.New("config: source")
	// ErrDecode means the merged configuration does not decode strictly
	// into the type: an unknown key, or a value of the wrong type.
	ErrDecode = errors.New("config: decode")
	// ErrInvalid means the decoded configuration failed validation.
	ErrInvalid = errors.New("config: invalid")
	// ErrRestartRequired means a change touched a key marked
	// `config:"restart"`, which only a restart may change.
	ErrRestartRequired = errors.New("config: restart required")
)

// Stage names the step of the change pipeline that failed.
type Stage string

// The stages of the change pipeline, in order.
const (
	StageFetch    Stage = "fetch"
	StageMerge    Stage = "merge"
	StageDecode   Stage = "decode"
	StageValidate Stage = "validate"
	StageRestart  Stage = "restart"
)

// ChangeError is a change the Store refused, with the stage where it
// failed. It wraps one of the sentinels and the cause.
type ChangeError struct {
	Stage  Stage    // the step that failed
	Source string   // the source at fault, when one is
	Keys   []string // for StageRestart: the restart-only keys changed
	Err    error    // one of the sentinels above, wrapping the cause
}

// Error names the stage, the source if any, and the cause; never a value.
func (e *ChangeError) Error() string {
	var b strings.Builder
	b.WriteString("config: change rejected at ")
	b.WriteString(string(e.Stage))
	if e.Source != "" {
		fmt.Fprintf(&b, " (source %s)", e.Source)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

// Unwrap returns Err, so that errors.Is finds the sentinel and the cause.
func (e *ChangeError) Unwrap() error { return e.Err }
