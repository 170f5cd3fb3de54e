package events

import (
	"context"
	"errors"
	"time"

	"github.com/activekit/activekit/retry"
)

// ErrUnavailable matches, with errors.Is, every error marked by Unavailable.
var ErrUnavailable = errors.New("events: dependency unavailable")

// Unavailable marks err as saying that a dependency the handler needs (a
// dedupe store, a database) is unavailable: the event is not at fault, and
// handling it again once the dependency is back is expected to work.
// Unavailable(nil) is nil. The marked error keeps err's message and chain:
// errors.Is and errors.As reach err, and errors.Is(marked, ErrUnavailable)
// is true.
//
// The rule for everything that retries or dead-letters events, Subscriber
// implementations and middleware alike, is that an Unavailable error is
// retried, with backoff, until it clears or ctx ends; it never dead-letters
// the event and never counts as an attempt of the event. A consumer whose
// store is down for a minute thus waits for the store, keeping its order,
// instead of dead-lettering every event that arrived meanwhile.
//
// Unavailable wins over Permanent: an error that is both (Unavailable
// wrapping a Permanent error, or the other way round, or an errors.Join of
// the two) is Unavailable, and is retried rather than dead-lettered. A
// handler that returns a Permanent error only because a dependency failed
// is not judged while the dependency is down.
//
// Mark only what is not the event's fault: an error the same event would
// cause again with the dependency up (invalid data, a constraint violation)
// must stay unmarked, or it blocks the partition instead of being
// dead-lettered.
func Unavailable(err error) error {
	if err == nil || IsUnavailable(err) {
		return err
	}
	return &unavailableError{err}
}

// IsUnavailable reports whether err, or any error in its chain (through
// Unwrap, errors.Join and *retry.Error alike), was marked by Unavailable.
// It costs nothing for nil (the errors.As target escapes to the heap).
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	var u *unavailableError
	return errors.As(err, &u)
}

type unavailableError struct{ err error }

func (e *unavailableError) Error() string        { return e.err.Error() }
func (e *unavailableError) Unwrap() error        { return e.err }
func (e *unavailableError) Is(target error) bool { return target == ErrUnavailable }

// whileUnavailable calls fn until it returns nil or an error that is not
// Unavailable, or until ctx ends, waiting between calls as p says (its
// intervals and jitter; its attempt and time limits do not apply, and it
// waits by the system clock). When ctx ends it returns fn's last error, an
// Unavailable one.
func whileUnavailable(ctx context.Context, p retry.Policy, fn func(context.Context) error) error {
	err := fn(ctx)
	if !IsUnavailable(err) {
		return err
	}
	p.MaxAttempts, p.MaxElapsedTime = -1, -1
	b, berr := retry.NewBackoff(p, nil)
	if berr != nil {
		return err // unreachable: p is a Retrier's policy, which is valid
	}
	for IsUnavailable(err) {
		if sleep(ctx, b.NextBackOff()) != nil {
			return err
		}
		err = fn(ctx)
	}
	return err
}

// sleep waits for d or until ctx ends, and returns ctx's error if it ended.
func sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
