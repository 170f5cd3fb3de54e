package retry

import (
	"errors"
	"strconv"
	"time"
)

// Reasons a retry loop stopped before an attempt succeeded. They are found
// with errors.Is on the error Do returns; that error also matches the last
// attempt's error.
var (
	// ErrMaxAttempts reports that Policy.MaxAttempts attempts were made.
	ErrMaxAttempts = errors.New("attempt limit reached")
	// ErrMaxElapsed reports that waiting for the next attempt would pass
	// Policy.MaxElapsedTime.
	ErrMaxElapsed = errors.New("elapsed time limit reached")
	// ErrDeadline reports that the next attempt could not start before the
	// context's deadline, so it was not scheduled.
	ErrDeadline = errors.New("next attempt would start after the context deadline")
	// ErrBudgetExhausted reports that the shared retry Budget refused a retry.
	ErrBudgetExhausted = errors.New("retry budget exhausted")
	// ErrInvalidPolicy reports a Policy, BudgetConfig or Option that cannot
	// be used. It is returned by New, NewBudget, NewBackoff and Policy.Validate,
	// and by Do and DoValue before they run anything.
	ErrInvalidPolicy = errors.New("retry: invalid policy")
)

// Error is the error returned when a retry loop gives up. It unwraps to the
// last attempt's error (Err) and, when the loop stopped for a reason other
// than the error itself, to that reason (Stop): one of ErrMaxAttempts,
// ErrMaxElapsed, ErrDeadline, ErrBudgetExhausted, or the context's error.
//
// So errors.Is(err, io.ErrUnexpectedEOF) and errors.Is(err, ErrDeadline) can
// both be true of one error, and errors.As reaches typed errors in Err.
type Error struct {
	// Attempts is the number of attempts made: 0 when the context had
	// already ended before the first one.
	Attempts int
	// Err is the last attempt's error; nil when Attempts is 0.
	Err error
	// Stop is why the loop stopped; nil when it stopped because Err was
	// permanent or not retryable.
	Stop error
}

// Error says how many attempts were made, why the loop stopped and the
// last attempt's error: "retry: 3 attempts, attempt limit reached: EOF".
func (e *Error) Error() string {
	b := make([]byte, 0, 64)
	b = append(b, "retry: "...)
	b = strconv.AppendInt(b, int64(e.Attempts), 10)
	if e.Attempts == 1 {
		b = append(b, " attempt"...)
	} else {
		b = append(b, " attempts"...)
	}
	if e.Stop != nil {
		b = append(b, ", "...)
		b = append(b, e.Stop.Error()...)
	}
	if e.Err != nil {
		b = append(b, ": "...)
		b = append(b, e.Err.Error()...)
	}
	return string(b)
}

// Unwrap returns the last attempt's error and the stop reason, whichever are
// set.
func (e *Error) Unwrap() []error {
	switch {
	case e.Err != nil && e.Stop != nil:
		return []error{e.Err, e.Stop}
	case e.Err != nil:
		return []error{e.Err}
	case e.Stop != nil:
		return []error{e.Stop}
	}
	return nil
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as not worth retrying: a retry loop that sees it stops
// at once, whatever the classifier says. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

type afterError struct {
	err error
	d   time.Duration
}

func (e *afterError) Error() string { return e.err.Error() }
func (e *afterError) Unwrap() error { return e.err }

// After attaches a server's hint (such as HTTP Retry-After) to err: the next
// delay is at least d. It is a floor, not a replacement: the delay is the
// larger of the policy's delay and d, and every other rule (attempt and
// elapsed limits, the context deadline, the budget) still applies.
// After(d, nil) is nil; a negative d counts as zero.
func After(d time.Duration, err error) error {
	if err == nil {
		return nil
	}
	return &afterError{err: err, d: max(d, 0)}
}

// IsRetryable is the default classifier: it reports whether err is worth
// another attempt. It is false for nil, for errors marked Permanent, and
// for an *Error from another retry loop: retrying at more than one layer
// multiplies attempts, so an error that has already been retried is final.
// Everything else is retryable, context.DeadlineExceeded and
// context.Canceled included: whether the caller has given up is for the
// caller's context to say, and Do checks it before it classifies an error
// (an attempt that failed because the caller's ctx ended stops the loop
// with that ctx's error as Error.Stop). A context error while the caller's
// ctx lives on comes from inside the attempt (a call with its own timeout
// timed out, a connection's deadline passed), the most ordinary of
// transient failures.
//
// Packages that know their backend better (driver error labels, status
// codes) set Policy.Retryable to their own classifier, and may call
// IsRetryable from it for the common cases.
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	var p *permanentError
	if errors.As(err, &p) {
		return false
	}
	var re *Error
	return !errors.As(err, &re)
}

func isPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

func hint(err error) (time.Duration, bool) {
	var a *afterError
	if errors.As(err, &a) {
		return a.d, true
	}
	return 0, false
}
