package activetest

import (
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"time"
)

// probeHeader marks the balancer's readiness probes; the instance removes
// it before its handler sees the probe, and counts no probe as served.
const probeHeader = "Activetest-Probe"

// probeUserAgent names the prober to the service, as kube-probe does.
const probeUserAgent = "activetest-probe"

// probeLoop probes in every Interval, moving it in and out of the
// rotation by the thresholds, until it is down and out of the rotation, or
// no longer the instance of its slot, or the fleet's cleanup.
func (f *Fleet) probeLoop(in *instance) {
	p := f.opts.probe
	settled := false // in.probed is closed
	defer func() {
		if !settled {
			close(in.probed)
		}
	}()
	tick := time.NewTicker(p.Interval)
	defer tick.Stop()
	var passed, failed int // in a row
	for {
		ok := f.probe(in)
		if f.probeCtx.Err() != nil {
			return
		}
		f.mu.Lock()
		if ok {
			passed, failed = passed+1, 0
			if !in.live && passed >= p.SuccessThreshold && !in.down {
				in.live = true
			}
		} else {
			passed, failed = 0, failed+1
			if in.live && failed >= p.FailureThreshold {
				in.live = false
			}
		}
		done := in.slot.cur != in || in.down && !in.live
		// Settled once the instance is in the rotation (its first
		// SuccessThreshold probes passed) or a probe failed: an
		// instance ready at once is in by the time NewFleet or Restart
		// returns.
		if !settled && (in.live || !ok || done) {
			settled = true
			close(in.probed)
		}
		f.mu.Unlock()
		if done {
			return
		}
		select {
		case <-tick.C:
		case <-f.probeCtx.Done():
			return
		}
	}
}

// probe sends one readiness probe to in, over the slot's fault, and
// reports whether it passed.
func (f *Fleet) probe(in *instance) bool {
	p := f.opts.probe
	ctx, cancel := context.WithTimeout(f.probeCtx, p.Timeout)
	defer cancel()
	ft := f.faultOf(in.slot)
	if ft.Refuse {
		return false
	}
	if ft.Latency > 0 {
		t := time.NewTimer(ft.Latency)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return false
		}
	}
	tr := in.probeTr
	if ft.ResetRate > 0 && rand.Float64() < ft.ResetRate {
		tr = in.resetTr
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+in.addr+p.Path, nil)
	if err != nil {
		return false
	}
	req.Header.Set(probeHeader, "1")
	req.Header.Set("User-Agent", probeUserAgent)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return false
	}
	_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	return err == nil && resp.StatusCode >= 200 && resp.StatusCode < 400
}

// waitProbed waits for in to enter the rotation, fail a probe, or its
// prober to stop; it returns at once without probing or for a nil
// instance.
func (in *instance) waitProbed() {
	if in == nil || in.probed == nil {
		return
	}
	<-in.probed
}
