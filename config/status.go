package config

import (
	"context"
	"fmt"
	"time"
)

// Level is the readiness level of a Store, in the terms of
// application/health+json.
type Level string

// A Store is either pass or warn, never fail: a refused change leaves the
// instance on its last good configuration, able to serve, and failing
// readiness on every instance at once (a bad push reaches them all) would
// empty the load balancer.
const (
	LevelPass Level = "pass"
	LevelWarn Level = "warn"
)

// Status is a Store's state for a readiness check and for health output.
type Status struct {
	// Level is LevelPass, or LevelWarn while Err is set.
	Level Level
	// Message is one line for health output: the hash in use and, at
	// warn, why the sources' latest state is not.
	Message string
	// Hash and Version identify the snapshot in use; AppliedAt is when it
	// was applied.
	Hash      string
	Version   uint64
	AppliedAt time.Time
	// Err is LastError: why the sources' latest state is not in use.
	Err error
	// FailingSince is when the latest refusal happened (zero when Err is
	// nil or comes from a source that cannot be read).
	FailingSince time.Time
}

// Status reports whether the current snapshot is what the sources say
// (pass) or the last good one kept after a refused change or an unreadable
// source (warn, with the reason in Message).
func (s *Store[T]) Status(context.Context) Status {
	snap := s.cur.Load()
	st := Status{Level: LevelPass, Hash: snap.hash, Version: snap.version, AppliedAt: snap.appliedAt}
	s.mu.Lock()
	st.Err = s.lastErrLocked()
	if s.lastErr != nil {
		st.FailingSince = s.failedAt
	}
	s.mu.Unlock()
	if st.Err != nil {
		st.Level = LevelWarn
		st.Message = fmt.Sprintf("keeping configuration %s applied at %s: %v", snap.hash, snap.appliedAt.UTC().Format(time.RFC3339), st.Err)
		return st
	}
	st.Message = "configuration " + snap.hash
	return st
}
