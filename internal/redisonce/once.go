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
// failed dial) is still sent again by the client.
package redisonce

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// Client is what Scripter needs of a client or a pipeline: both
// redis.UniversalClient and redis.Pipeliner are one.
type Client interface {
	redis.Scripter
	Process(ctx context.Context, cmd redis.Cmder) error
}

// Scripter is a redis.Scripter over C whose Eval and EvalSha send commands
// marked NoRetry; the read-only variants and the script cache calls go to C
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
	cmd := redis.NewCmd(ctx, a...)
	if len(keys) > 0 {
		cmd.SetFirstKeyPos(3)
	}
	_ = o.C.Process(ctx, noRetry{cmd})
	return cmd
}

// noRetry is a command go-redis must not send again once sent.
type noRetry struct{ *redis.Cmd }

// NoRetry implements redis.Cmder.
func (noRetry) NoRetry() bool { return true }
