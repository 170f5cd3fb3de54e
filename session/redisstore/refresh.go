package redisstore

import (
	"sync"
	"time"
)

// DefaultIdleResolution is how long after moving a session's idle deadline a
// Store reads the session without moving it again, unless WithIdleResolution
// says otherwise.
const DefaultIdleResolution = time.Second

// absMargin: a Load moves the idle deadline whenever the absolute deadline
// is less than the idle timeout plus absMargin away on the local clock, so
// that the check against the absolute deadline (made on Redis's clock, see
// loadPlain) is never skipped near it, as long as the local clock and
// Redis's are less than a minute apart.
const absMargin = time.Minute

// refreshShards and refreshShardCap bound the memory of the refreshed set:
// 32 shards of at most 2,048 sessions each.
const (
	refreshShards   = 32
	refreshShardCap = 2048
)

// refreshed remembers, per session key, when this Store last moved its idle
// deadline and what the deadline then was, so that a Load within the
// resolution sends HGETALL alone instead of PEXPIRE ... GT, HGETALL and
// PEXPIRETIME: two fewer commands on the read of every request in a burst
// of requests for one session. The deadline it returns is then a lower bound
// (other instances may have moved it since), which never moves backwards.
// Entries lapse by themselves; a shard that reaches its capacity drops its
// lapsed entries, or, when none has lapsed, all of them. No goroutine.
type refreshed struct {
	epoch  time.Time // the monotonic origin of the times below
	shards [refreshShards]refreshShard
}

type refreshShard struct {
	mu sync.Mutex
	m  map[string]refreshEntry
}

type refreshEntry struct {
	until    time.Duration // since epoch: the entry lapses then
	idle     int64         // the idle timeout of the refresh, ms
	deadline int64         // the idle deadline after the refresh, ms on Redis's clock
}

func newRefreshed() *refreshed { return &refreshed{epoch: time.Now()} }

// shard picks a key's shard from its last byte: a key ends in the hex or
// base64url SHA-256 of a token (see sessionKey), evenly spread.
func (r *refreshed) shard(key string) *refreshShard {
	return &r.shards[key[len(key)-1]%refreshShards]
}

// fresh returns the idle deadline that a Load of key with an idle timeout
// of idle ms may report without moving it, and whether there is one.
func (r *refreshed) fresh(key string, idle int64) (int64, bool) {
	e, ok := r.get(key, idle)
	if !ok || e.deadline == 0 {
		return 0, false // none, or made by an Apply, which knows no deadline
	}
	return e.deadline, true
}

// moved reports whether this Store moved key's idle deadline, by a Load or
// an Apply with an idle timeout of at least idle ms, within the resolution.
func (r *refreshed) moved(key string, idle int64) bool {
	_, ok := r.get(key, idle)
	return ok
}

func (r *refreshed) get(key string, idle int64) (refreshEntry, bool) {
	sh := r.shard(key)
	sh.mu.Lock()
	e, ok := sh.m[key]
	sh.mu.Unlock()
	if !ok || e.idle < idle || time.Since(r.epoch) >= e.until {
		return refreshEntry{}, false
	}
	return e, true
}

// wrote records that an Apply with an idle timeout of idle ms moved key's
// idle deadline, for res (see store for what is left of it). It is not
// called for an Apply that asked applyFastScript to skip the move: that
// moved nothing and must not start a resolution, or Applies straddling the
// lapse of each one would keep the deadline from ever moving. The entry
// knows no deadline, so a Load does not use it; an Apply does, and
// applyFastScript checks the absolute deadline itself.
func (r *refreshed) wrote(key string, idle int64, res time.Duration) {
	if res <= 0 || r.moved(key, idle) {
		return
	}
	r.put(key, refreshEntry{until: time.Since(r.epoch) + res, idle: idle})
}

// store records that key's idle deadline was moved to deadline (ms) by a
// refresh with idle ms, for res from now; abs is the record's absolute
// deadline (ms). Nothing is recorded near the absolute deadline (see
// absMargin). The callers pass what is left of the resolution since they
// sent the refresh (see remaining), so that a late reply does not make the
// deadline lag more than the resolution.
func (r *refreshed) store(key string, idle, deadline, abs int64, res time.Duration) {
	now := time.Now()
	if res <= 0 || now.UnixMilli()+idle+absMargin.Milliseconds() >= abs {
		return
	}
	r.put(key, refreshEntry{until: now.Sub(r.epoch) + res, idle: idle, deadline: deadline})
}

func (r *refreshed) put(key string, e refreshEntry) {
	sh := r.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.m == nil {
		sh.m = make(map[string]refreshEntry)
	}
	if _, ok := sh.m[key]; !ok && len(sh.m) >= refreshShardCap {
		at := time.Since(r.epoch)
		for k, old := range sh.m {
			if at >= old.until {
				delete(sh.m, k)
			}
		}
		if len(sh.m) >= refreshShardCap {
			clear(sh.m)
		}
	}
	if old, ok := sh.m[key]; ok && e.deadline != 0 && old.deadline > e.deadline {
		// Two refreshes whose replies came back out of order: the later
		// reply read the deadline before the other moved it further.
		e.deadline = old.deadline
	}
	sh.m[key] = e
}

// forget drops key: its record was not found.
func (r *refreshed) forget(key string) {
	sh := r.shard(key)
	sh.mu.Lock()
	delete(sh.m, key)
	sh.mu.Unlock()
}

// resolution is the resolution for an idle timeout of idle: the Store's,
// but never more than a tenth of the timeout.
func resolution(res time.Duration, idle time.Duration) time.Duration {
	return min(res, idle/10)
}

// remaining is what is left of the resolution for idle of a move sent at
// sent: the resolution runs from the request, not from its reply.
func remaining(res time.Duration, idle time.Duration, sent time.Time) time.Duration {
	return resolution(res, idle) - time.Since(sent)
}
