// Package redisonce runs Redis scripts as commands go-redis never sends a
// second time.
//
// go-redis retries by default, and it resends a command whose reply was lost
// to a dropped connection or a timeout, after Redis may have run it. A write
// script run twice answers from its own first run: a compare-and-set that
// applied answers "conflict", a claim recorded answers "lease lost". The
// caller then acts on a falsehood. Through Scripter such a script fails with
// the transport's error instead, its outcome unknown, which the caller can
// report as such. A command that never reached Redis (a MOVED redirection, a
// failed dial) is still sent again by the client, and so, by Scripter, is one
// that Redis refused before running it (see NotRun).
package redisonce

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// notRun are the error codes with which Redis refuses a script before
// running any of it, or stops it at its first write: a slot being migrated
// with the keys split between nodes (TRYAGAIN), a cluster without its slots
// (CLUSTERDOWN), a node loading its dataset (LOADING), a node busy with
// another script (BUSY), a replica that lost its primary (MASTERDOWN) or a
// former primary now a replica (READONLY).
var notRun = []string{"TRYAGAIN", "CLUSTERDOWN", "LOADING", "BUSY", "MASTERDOWN", "READONLY"}

// NotRun reports whether err is a reply with which Redis refused a script
// without any of its effects: sending it again cannot run it twice.
func NotRun(err error) bool {
	return slices.Contains(notRun, ErrorCode(err))
}

// ErrorCode returns the code of a Redis error reply ("READONLY" of
// "READONLY You can't write..."), also when a script's command failed on a
// server before 7, which wraps it ("ERR Error running script (...): ...:
// -READONLY ..."); "" when err is no error reply.
func ErrorCode(err error) string {
	var re redis.Error
	if err == nil || !errors.As(err, &re) {
		return ""
	}
	msg := re.Error()
	if rest, ok := strings.CutPrefix(msg, "ERR Error running script"); ok {
		if i := strings.Index(rest, ": -"); i >= 0 {
			msg = rest[i+3:]
		}
	}
	code, _, _ := strings.Cut(msg, " ")
	return code
}

// Refusals bounds the sends of one script that Redis refused without
// running it (NotRun), waiting 10ms, 20ms, 40ms... between them, as long as
// ctx lasts: a slot migration or a failover's few hundred milliseconds, not
// an outage.
const Refusals = 6

// Client is what Scripter needs of a client or a pipeline: both
// redis.UniversalClient and redis.Pipeliner are one.
type Client interface {
	redis.Scripter
	Process(ctx context.Context, cmd redis.Cmder) error
}

// Scripter is a redis.Scripter over C whose Eval and EvalSha send commands
// marked NoRetry, sent again only when Redis refused them without running
// them (NotRun, at most Refusals sends in all); the read-only variants and the script cache calls go to C
// unchanged (they may safely be resent).
type Scripter struct{ C Client }

var _ redis.Scripter = Scripter{}

// Eval implements redis.Scripter.
func (o Scripter) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return o.eval(ctx, "eval", script, keys, args)
}

// EvalSha implements redis.Scripter.
func (o Scripter) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return o.eval(ctx, "evalsha", sha1, keys, args)
}

// EvalRO implements redis.Scripter.
func (o Scripter) EvalRO(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return o.C.EvalRO(ctx, script, keys, args...)
}

// EvalShaRO implements redis.Scripter.
func (o Scripter) EvalShaRO(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return o.C.EvalShaRO(ctx, sha1, keys, args...)
}

// ScriptExists implements redis.Scripter.
func (o Scripter) ScriptExists(ctx context.Context, hashes ...string) *redis.BoolSliceCmd {
	return o.C.ScriptExists(ctx, hashes...)
}

// ScriptLoad implements redis.Scripter.
func (o Scripter) ScriptLoad(ctx context.Context, script string) *redis.StringCmd {
	return o.C.ScriptLoad(ctx, script)
}

// eval builds the command as go-redis's own Eval does.
func (o Scripter) eval(ctx context.Context, name, payload string, keys []string, args []any) *redis.Cmd {
	a := make([]any, 0, 3+len(keys)+len(args))
	a = append(a, name, payload, len(keys))
	for _, k := range keys {
		a = append(a, k)
	}
	a = append(a, args...)
	wait := 10 * time.Millisecond
	for sent := 1; ; sent++ {
		cmd := redis.NewCmd(ctx, a...)
		if len(keys) > 0 {
			cmd.SetFirstKeyPos(3)
		}
		// In a pipeline Process only queues: no error, one send.
		err := o.C.Process(ctx, noRetry{cmd})
		if sent == Refusals || !NotRun(err) {
			return cmd
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return cmd
		case <-t.C:
		}
		wait *= 2
	}
}

// noRetry is a command go-redis must not send again once sent.
type noRetry struct{ *redis.Cmd }

// NoRetry implements redis.Cmder.
func (noRetry) NoRetry() bool { return true }
