package health

import (
	"errors"
	"time"
)

// Status is the health of a check or of a whole view, as the IETF draft
// "Health Check Response Format for HTTP APIs" (draft-inadarei-api-health-check)
// spells it.
type Status string

// The three statuses of the response format, from best to worst.
const (
	// StatusPass means healthy.
	StatusPass Status = "pass"
	// StatusWarn means healthy with a concern: the instance keeps taking
	// traffic (a warn never fails a view) but an operator should look, for
	// example because the last configuration reload was rejected.
	StatusWarn Status = "warn"
	// StatusFail means unhealthy: the view answers 503.
	StatusFail Status = "fail"
)

// rank orders statuses so that the worst wins when they are combined. An
// unknown status ranks as fail.
func (s Status) rank() int {
	switch s {
	case StatusPass:
		return 0
	case StatusWarn:
		return 1
	default:
		return 2
	}
}

// worse returns the worse of s and t.
func (s Status) worse(t Status) Status {
	if t.rank() > s.rank() {
		return t
	}
	return s
}

// Result is what a check observed. A check built on Check.Func gets its
// Result from the error it returns; a check built on Check.Result reports it
// directly. The registry fills Time, and ComponentID and ComponentType from
// the Check when the Result leaves them empty.
type Result struct {
	// Status of the check. Empty means StatusPass. Any value other than
	// pass, warn and fail is reported as fail.
	Status Status
	// ComponentID identifies the component instance, such as a host:port
	// or a database name.
	ComponentID string
	// ComponentType is "component", "datastore", "system" or another
	// common type name, as the draft suggests.
	ComponentType string
	// ObservedValue is the measured value (a number, a string, a boolean
	// or anything encoding/json can marshal).
	ObservedValue any
	// ObservedUnit is the unit of ObservedValue, such as "ms" or "percent".
	ObservedUnit string
	// Output is a human-readable explanation, usually the error text. The
	// draft says it should be empty when the status is pass.
	Output string
	// Time is when the result was observed. The registry sets it.
	Time time.Time
}

// Response is the body of a health view in application/health+json. Field
// names and meanings follow draft-inadarei-api-health-check, with one
// extension, ConfigHash. Clients can decode a response into it.
type Response struct {
	// Status is the worst status of the view's checks, or fail when the
	// instance is not in a state to pass the view (starting or draining).
	Status Status `json:"status"`
	// Version is the public version of the service (the service version of
	// the identity).
	Version string `json:"version,omitempty"`
	// ReleaseID is the internal release of the service (WithReleaseID).
	ReleaseID string `json:"releaseId,omitempty"`
	// Notes are free-form notes (WithNotes).
	Notes []string `json:"notes,omitempty"`
	// Output explains a fail or warn at the top level, such as "draining".
	Output string `json:"output,omitempty"`
	// ServiceID is the ID of this instance (the instance ID of the
	// identity), so that responses from N instances can be told apart.
	ServiceID string `json:"serviceId,omitempty"`
	// Description is a human-readable description of the service; the
	// service name of the identity by default.
	Description string `json:"description,omitempty"`
	// ConfigHash is the hash of the effective configuration of this
	// instance (WithConfigHash). It is an extension to the draft, which
	// allows extra top-level fields: comparing it across the fleet shows
	// configuration drift.
	ConfigHash string `json:"configHash,omitempty"`
	// Checks maps "componentName:measurementName" to the results of the
	// check of that name. Each array has one element.
	Checks map[string][]CheckResult `json:"checks,omitempty"`
}

// CheckResult is one element of a Response's checks arrays.
type CheckResult struct {
	ComponentID   string    `json:"componentId,omitempty"`
	ComponentType string    `json:"componentType,omitempty"`
	ObservedValue any       `json:"observedValue,omitempty"`
	ObservedUnit  string    `json:"observedUnit,omitempty"`
	Status        Status    `json:"status"`
	Time          time.Time `json:"time"`
	Output        string    `json:"output,omitempty"`
}

// Warn marks err as a warning: a Check.Func that returns Warn(err) reports
// StatusWarn instead of StatusFail, so the instance stays ready. Warn(nil)
// is nil. The returned error unwraps to err.
func Warn(err error) error {
	if err == nil {
		return nil
	}
	return &warnError{err: err}
}

type warnError struct{ err error }

func (w *warnError) Error() string { return w.err.Error() }
func (w *warnError) Unwrap() error { return w.err }

// resultOf turns the error of a Check.Func into a Result.
func resultOf(err error) Result {
	if err == nil {
		return Result{Status: StatusPass}
	}
	var w *warnError
	if errors.As(err, &w) {
		return Result{Status: StatusWarn, Output: err.Error()}
	}
	return Result{Status: StatusFail, Output: err.Error()}
}
