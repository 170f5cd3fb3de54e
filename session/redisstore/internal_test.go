package redisstore

import (
	"context"
	"errors"
	"fmt"
	"testing"
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
