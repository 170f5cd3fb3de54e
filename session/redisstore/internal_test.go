package redisstore

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// replyError is an error reply from a server, as go-redis returns one.
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

// TestOldServerReplies: Load falls back to the load script on the replies of
// a server before Redis 7.0 to PEXPIRETIME and PEXPIRE ... GT, and on no
// other error (a failover's READONLY must not switch it).
func TestOldServerReplies(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{replyError("ERR unknown command `pexpiretime`, with args beginning with: `s:{x}` "), true}, // 6.2
		{replyError("ERR unknown command 'pexpiretime'"), true},                                     // 5.0
		{replyError("ERR wrong number of arguments for 'pexpire' command"), true},                   // 6.2, GT
		{fmt.Errorf("redisstore: load: %w", replyError("ERR unknown command 'pexpiretime'")), true},
		{replyError("READONLY You can't write against a read only replica."), false},
		{replyError("LOADING Redis is loading the dataset in memory"), false},
		{replyError("WRONGTYPE Operation against a key holding the wrong kind of value"), false},
		{replyError("ERR max number of clients reached"), false},
		{errors.New("ERR unknown command 'pexpiretime'"), false}, // not a reply
		{context.Canceled, false},
	} {
		if got := oldServer(tc.err); got != tc.want {
			t.Errorf("oldServer(%q) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestDecodeValuesApart: the values of a record share one allocation, but
// appending to one never changes another.
func TestDecodeValuesApart(t *testing.T) {
	rec, err := decode("id", map[string]string{"k:a": "1:aa", "k:b": "2:bb", "k:c": "3:", "_v": "3"})
	if err != nil {
		t.Fatal(err)
	}
	for k := range rec.Values {
		v := rec.Values[k]
		v.Data = append(v.Data, "XYZ"...)
	}
	for k, want := range map[string]string{"a": "aa", "b": "bb", "c": ""} {
		if got := string(rec.Values[k].Data); got != want {
			t.Errorf("value %s = %q after appending to the others, want %q", k, got, want)
		}
	}
}

// TestRefreshedBounded: the refreshed set never holds more than its
// capacity, drops lapsed entries first, and honours an entry's idle
// timeout and lapse.
func TestRefreshedBounded(t *testing.T) {
	r := newRefreshed()
	abs := time.Now().Add(24 * time.Hour).UnixMilli()
	for i := range refreshShards * refreshShardCap * 3 {
		r.store(fmt.Sprintf("s:{%x}", i), 1000, 5, abs, time.Hour)
	}
	total := 0
	for i := range r.shards {
		if n := len(r.shards[i].m); n > refreshShardCap {
			t.Fatalf("shard %d holds %d entries, cap %d", i, n, refreshShardCap)
		}
		total += len(r.shards[i].m)
	}
	if total == 0 {
		t.Fatal("no entry kept")
	}
	key := "s:{k}"
	r.store(key, 1000, 42, abs, time.Hour)
	if d, ok := r.fresh(key, 1000); !ok || d != 42 {
		t.Fatalf("fresh(same idle) = %d, %v; want 42, true", d, ok)
	}
	if _, ok := r.fresh(key, 500); !ok {
		t.Error("fresh(shorter idle): not fresh")
	}
	if _, ok := r.fresh(key, 2000); ok {
		t.Error("fresh(longer idle): fresh")
	}
	// Replies out of order: the deadline kept is the later one.
	r.store(key, 1000, 41, abs, time.Hour)
	if d, _ := r.fresh(key, 1000); d != 42 {
		t.Errorf("fresh after an older deadline was stored: %d, want 42", d)
	}
	r.forget(key)
	if _, ok := r.fresh(key, 1000); ok {
		t.Error("fresh after forget")
	}
	r.store(key, 1000, 42, abs, time.Nanosecond)
	time.Sleep(time.Millisecond)
	if _, ok := r.fresh(key, 1000); ok {
		t.Error("fresh after the resolution lapsed")
	}
	// Lapsed entries go first when a shard is full.
	sh := r.shard(key)
	clear(sh.m)
	for i := 0; len(sh.m) < refreshShardCap-1; i++ {
		if k := fmt.Sprintf("s:{%x}%c", i, key[len(key)-1]); r.shard(k) == sh {
			r.store(k, 1000, 1, abs, time.Nanosecond)
		}
	}
	r.store(key, 1000, 1, abs, time.Hour)
	time.Sleep(time.Millisecond)
	r.store("s:{new}"+key[len(key)-1:], 1000, 1, abs, time.Hour)
	if _, ok := r.fresh(key, 1000); !ok || len(sh.m) != 2 {
		t.Errorf("a full shard kept %d entries (fresh one kept: %v), want only the 2 live ones", len(sh.m), ok)
	}
	// Near the absolute deadline nothing is recorded.
	r.store("s:{near}", 1000, 1, time.Now().Add(time.Minute).UnixMilli(), time.Hour)
	if _, ok := r.fresh("s:{near}", 1000); ok {
		t.Error("an entry was kept within a minute plus the idle timeout of the absolute deadline")
	}
}
