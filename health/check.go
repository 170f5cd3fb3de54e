package health

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// entry is a registered check with its cache and its run in flight.
type entry struct {
	check Check
	reg   *Registry

	mu      sync.Mutex
	last    Result    // last delivered result; valid when hasLast
	hasLast bool      //
	expires time.Time // last is reused until then
	call    *call     // the run in flight, until its function returns
}

// call is one run of a check. Its result is delivered once: when the
// function returns or when the timeout fires, whichever is first.
type call struct {
	done      chan struct{} // closed on delivery
	delivered bool          // guarded by entry.mu
	res       Result        // set before done is closed
}

// cached returns the cached result while it is fresh.
func (e *entry) cached() (Result, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.hasLast && e.reg.clock.Now().Before(e.expires) {
		return e.last, true
	}
	return Result{}, false
}

// get returns a cached result while it is fresh, else joins the run in
// flight, else starts a run. It returns when the run delivers (at most the
// check's timeout later) or when ctx ends.
func (e *entry) get(ctx context.Context) Result {
	e.mu.Lock()
	now := e.reg.clock.Now()
	if e.hasLast && now.Before(e.expires) {
		res := e.last
		e.mu.Unlock()
		return res
	}
	c := e.call
	switch {
	case c == nil:
		c = e.start(ctx)
	case c.delivered:
		// The last run timed out and its function has not returned yet.
		// Start no second run beside it: report the timeout again.
		res := e.last
		e.mu.Unlock()
		return res
	}
	e.mu.Unlock()

	select {
	case <-c.done:
		return c.res
	case <-ctx.Done():
		return e.fill(Result{
			Status: StatusFail,
			Output: fmt.Sprintf("no result before the probe ended: %v", context.Cause(ctx)),
			Time:   e.reg.clock.Now(),
		})
	}
}

// start begins a run. e.mu is held.
func (e *entry) start(parent context.Context) *call {
	c := &call{done: make(chan struct{})}
	e.call = c
	timeout := e.check.Timeout

	// The run belongs to every caller that joins it, so no single caller's
	// cancellation may end it: it keeps the values of ctx (trace context)
	// and gets its own deadline.
	ctx, cancel := timeoutContext(context.WithoutCancel(parent), e.reg.clock, timeout)
	// The result is delivered at the timeout even if the function ignores
	// ctx and goes on running.
	timer := e.reg.clock.AfterFunc(timeout, func() {
		e.deliver(c, Result{
			Status: StatusFail,
			Output: fmt.Sprintf("timed out after %v", timeout),
		}, false)
	})

	go func() {
		res := e.run(ctx)
		if ctx.Err() != nil {
			// Only the run's own deadline ends ctx (it is detached from
			// the callers'): whatever the function returned on its way
			// out, such as ctx.Err(), the run timed out. Without this, a
			// function quick to return on cancellation could beat the
			// timer's result and report "context canceled".
			res = Result{Status: StatusFail, Output: fmt.Sprintf("timed out after %v", timeout)}
		}
		timer.Stop()
		cancel()
		e.deliver(c, res, true)
	}()
	return c
}

// run calls the check function; a panic is a fail.
func (e *entry) run(ctx context.Context) (res Result) {
	defer func() {
		if p := recover(); p != nil {
			e.reg.log.Error("health: check panicked", "check", e.check.Name, "panic", p)
			res = Result{Status: StatusFail, Output: fmt.Sprintf("check panicked: %v", p)}
		}
	}()
	if e.check.Func != nil {
		return resultOf(e.check.Func(ctx))
	}
	res = e.check.Result(ctx)
	switch res.Status {
	case "":
		res.Status = StatusPass
	case StatusPass, StatusWarn, StatusFail:
	default:
		bad := res.Status
		res.Status = StatusFail
		if res.Output == "" {
			res.Output = fmt.Sprintf("invalid status %q", string(bad))
		}
	}
	return res
}

// fill completes a result with the check's defaults.
func (e *entry) fill(res Result) Result {
	if res.ComponentID == "" {
		res.ComponentID = e.check.ComponentID
	}
	if res.ComponentType == "" {
		res.ComponentType = e.check.ComponentType
	}
	if res.Time.IsZero() {
		res.Time = e.reg.clock.Now()
	}
	res.Time = res.Time.UTC()
	return res
}

// deliver publishes the first result of c, caches it and wakes the callers.
// returned says that c's function has returned: c ends in the same critical
// section, so that no probe sees c delivered and still in flight, which
// means a run that timed out and is still stuck (see get), and reuses the
// result instead of starting a run.
func (e *entry) deliver(c *call, res Result, returned bool) {
	now := e.reg.clock.Now()
	res.Time = now
	res = e.fill(res)
	e.mu.Lock()
	if returned && e.call == c {
		e.call = nil
	}
	if c.delivered {
		e.mu.Unlock()
		return
	}
	c.delivered = true
	c.res = res
	prev, hadPrev := e.last, e.hasLast
	e.last, e.hasLast = res, true
	e.expires = now.Add(e.check.Interval)
	close(c.done)
	e.mu.Unlock()

	if !hadPrev || prev.Status != res.Status {
		level := slogLevelFor(res.Status)
		e.reg.log.Log(context.Background(), level, "health: check status",
			"check", e.check.Name, "status", string(res.Status), "output", res.Output)
	}
}
