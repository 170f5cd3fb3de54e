package dedupe

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisConfig configures a RedisStore. Zero fields mean the defaults.
type RedisConfig struct {
	// Prefix starts every key; zero means "dedupe:".
	Prefix string
	// Retention is how long a done event is remembered; redeliveries
	// later than that run again. Zero means 7 days.
	Retention time.Duration
}

// RedisStore is a Store in Redis (standalone, Sentinel, Cluster or Ring,
// through redis.UniversalClient). A claim is one key, {prefix}{group}:{id} with the
// group and ID in a hash tag so that a handler's own keys can share its
// Cluster slot, holding "c:<token>" with the lease as its expiry, or "d" with
// the retention as its expiry. Claim, Done and Release are each one Lua
// script, one round trip; ClaimBatch, DoneBatch and ReleaseBatch do many in
// one round trip (a BatchStore).
type RedisStore struct {
	c         redis.UniversalClient
	prefix    string
	retention time.Duration
}

var _ Store = (*RedisStore)(nil)

// NewRedisStore returns a store on c. It makes no call to Redis.
func NewRedisStore(c redis.UniversalClient, cfg RedisConfig) (*RedisStore, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: nil client", ErrConfig)
	}
	if cfg.Retention < 0 {
		return nil, fmt.Errorf("%w: negative Retention", ErrConfig)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "dedupe:"
	}
	if cfg.Retention == 0 {
		cfg.Retention = 7 * 24 * time.Hour
	}
	return &RedisStore{c: c, prefix: cfg.Prefix, retention: cfg.Retention}, nil
}

// Key returns the Redis key of (group, id). Its hash tag is {group:id}.
func (s *RedisStore) Key(group, id string) string {
	return s.prefix + "{" + group + ":" + id + "}"
}

// claimScript: KEYS[1] the claim key; ARGV[1] the new value, ARGV[2] the
// lease in ms. Returns {status, pttl}. A key that already holds ARGV[1] is
// claimed again (a retried pipeline that partly ran), so a claim with a
// given token is idempotent.
var claimScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, 0}
end
if v == 'd' then return {2, 0} end
return {3, redis.call('PTTL', KEYS[1])}
`)

// doneScript: KEYS[1]; ARGV[1] the claim value, ARGV[2] retention in ms.
// Returns 1 when marked, 2 when already done, 0 when the claim is lost.
var doneScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('SET', KEYS[1], 'd', 'PX', ARGV[2])
  return 1
end
if v == 'd' then return 2 end
return 0
`)

// releaseScript: KEYS[1]; ARGV[1] the claim value.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

func claimValue(token string) string { return "c:" + token }

// Claim implements Store.
func (s *RedisStore) Claim(ctx context.Context, group, id string, lease time.Duration) (Claim, error) {
	if lease < time.Millisecond {
		return Claim{}, fmt.Errorf("%w: lease %v under 1ms", ErrConfig, lease)
	}
	c := Claim{Group: group, ID: id, Token: NewToken()}
	res, err := claimScript.Run(ctx, s.c, []string{s.Key(group, id)}, claimValue(c.Token), lease.Milliseconds()).Int64Slice()
	if err != nil {
		return Claim{}, err
	}
	return claimResult(c, res)
}

func claimResult(c Claim, res []int64) (Claim, error) {
	if len(res) != 2 {
		return Claim{}, fmt.Errorf("dedupe: unexpected claim reply %v", res)
	}
	c.Status = Status(res[0])
	if c.Status != Claimed {
		c.Token = ""
	}
	if c.Status == Busy && res[1] > 0 {
		c.Remaining = time.Duration(res[1]) * time.Millisecond
	}
	return c, nil
}

// Scripts over many keys, for the batch methods on a *redis.Client
// (standalone, Sentinel), where every key is on one server: one call, one
// round trip, for a whole batch.
//
// claimManyScript: KEYS the claim keys; ARGV[1] the new value, ARGV[2] the
// lease in ms. Returns {status, pttl} for each key, flattened.
var claimManyScript = redis.NewScript(`
local out = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('SET', k, ARGV[1], 'NX', 'GET', 'PX', ARGV[2])
  if not v then
    out[2*i-1] = 1; out[2*i] = 0
  elseif v == ARGV[1] then
    redis.call('PEXPIRE', k, ARGV[2])
    out[2*i-1] = 1; out[2*i] = 0
  elseif v == 'd' then
    out[2*i-1] = 2; out[2*i] = 0
  else
    out[2*i-1] = 3; out[2*i] = redis.call('PTTL', k)
  end
end
return out
`)

// doneManyScript: KEYS the claim keys; ARGV[1] the retention in ms,
// ARGV[i+1] the claim value of KEYS[i]. It marks every key done, held or
// not (the caller's effects happened), and returns for each 1 when the
// claim was held, 2 when the key was already done, 0 when the claim had
// been lost.
var doneManyScript = redis.NewScript(`
local out = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('SET', k, 'd', 'GET', 'PX', ARGV[1])
  if v == ARGV[i+1] then
    out[i] = 1
  elseif v == 'd' then
    out[i] = 2
  else
    out[i] = 0
  end
end
return out
`)

// releaseManyScript: KEYS the claim keys; ARGV[i] the claim value of KEYS[i].
var releaseManyScript = redis.NewScript(`
local n = 0
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[i] then n = n + redis.call('DEL', k) end
end
return n
`)

// maxBatchKeys bounds the keys of one many-key script call, so one call
// does not hold the server for long.
const maxBatchKeys = 1000

// sharded reports whether keys of different events may live on different
// nodes, so that one script cannot take them all. Only a *redis.Client
// (standalone, or Sentinel's failover client) sends every key to one
// server; a Cluster or a Ring shards by key, and any other UniversalClient
// (an AutoPipeliner over either, a wrapper) is treated as sharded, since a
// script over keys of several shards would run on the first key's shard and
// write the others where the single-key methods never look.
func (s *RedisStore) sharded() bool {
	_, ok := s.c.(*redis.Client)
	return !ok
}

var _ BatchStore = (*RedisStore)(nil)

// ClaimBatch claims many events of one group in one round trip, each as
// Claim would, all with one token: on standalone and Sentinel one script
// call over all the keys (per 1000 keys), on Cluster, Ring or any other
// client a pipeline of the claim script (the keys may be on different
// nodes). The claims are in the order of ids; an ID repeated in ids is busy
// after its first claim, as a second Claim would report.
func (s *RedisStore) ClaimBatch(ctx context.Context, group string, ids []string, lease time.Duration) ([]Claim, error) {
	if lease < time.Millisecond {
		return nil, fmt.Errorf("%w: lease %v under 1ms", ErrConfig, lease)
	}
	// A repeated ID is answered as a second Claim would be: not claimed
	// twice (the scripts would take it again, since it holds this batch's
	// token), but busy while the first is held.
	var first map[string]int
	for i, id := range ids {
		if first == nil {
			first = make(map[string]int, len(ids))
		}
		if _, dup := first[id]; !dup {
			first[id] = i
		}
	}
	if len(first) < len(ids) {
		uniq := make([]string, 0, len(first))
		for i, id := range ids {
			if first[id] == i {
				uniq = append(uniq, id)
			}
		}
		cs, err := s.ClaimBatch(ctx, group, uniq, lease)
		if err != nil {
			return nil, err
		}
		byID := make(map[string]Claim, len(cs))
		for _, c := range cs {
			byID[c.ID] = c
		}
		claims := make([]Claim, len(ids))
		for i, id := range ids {
			c := byID[id]
			if first[id] != i && c.Status == Claimed {
				c = Claim{Group: group, ID: id, Status: Busy, Remaining: lease}
			}
			claims[i] = c
		}
		return claims, nil
	}
	token := NewToken()
	value := claimValue(token)
	claims := make([]Claim, len(ids))
	for i, id := range ids {
		claims[i] = Claim{Group: group, ID: id, Token: token}
	}
	if len(ids) == 0 {
		return claims, nil
	}
	if s.sharded() {
		cmds, err := s.pipeScript(ctx, claimScript, len(ids), func(i int) ([]string, []any) {
			return []string{s.Key(group, ids[i])}, []any{value, lease.Milliseconds()}
		})
		if err != nil {
			return nil, err
		}
		for i, cmd := range cmds {
			res, err := cmd.Int64Slice()
			if err != nil {
				return nil, err
			}
			if claims[i], err = claimResult(claims[i], res); err != nil {
				return nil, err
			}
		}
		return claims, nil
	}
	for lo := 0; lo < len(ids); lo += maxBatchKeys {
		hi := min(lo+maxBatchKeys, len(ids))
		keys := make([]string, hi-lo)
		for i := range keys {
			keys[i] = s.Key(group, ids[lo+i])
		}
		res, err := claimManyScript.Run(ctx, s.c, keys, value, lease.Milliseconds()).Int64Slice()
		if err != nil {
			return nil, err
		}
		if len(res) != 2*len(keys) {
			return nil, fmt.Errorf("dedupe: unexpected claim batch reply of %d values for %d keys", len(res), len(keys))
		}
		for i := range keys {
			if claims[lo+i], err = claimResult(claims[lo+i], res[2*i:2*i+2]); err != nil {
				return nil, err
			}
		}
	}
	return claims, nil
}

// DoneBatch marks many claims done in one round trip (one script call on
// standalone and Sentinel, a pipeline of SET ... GET on Cluster or Ring). Unlike
// Done, it marks a claim done even when its lease had ended, since the
// caller says the effect happened, and reports ErrLeaseLost for it: another
// claimer may have taken it over, and its DoneWith will then refuse to
// record a second effect.
func (s *RedisStore) DoneBatch(ctx context.Context, cs []Claim) ([]error, error) {
	res := make([]error, len(cs))
	if len(cs) == 0 {
		return res, nil
	}
	ret := s.retention.Milliseconds()
	if s.sharded() {
		pipe := s.c.Pipeline()
		cmds := make([]*redis.Cmd, len(cs))
		for i, c := range cs {
			cmds[i] = pipe.Do(ctx, "SET", s.Key(c.Group, c.ID), "d", "GET", "PX", ret)
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
		for i, cmd := range cmds {
			v, err := cmd.Text()
			if err != nil && !errors.Is(err, redis.Nil) {
				return nil, err
			}
			if v != "d" && v != claimValue(cs[i].Token) {
				res[i] = ErrLeaseLost
			}
		}
		return res, nil
	}
	for lo := 0; lo < len(cs); lo += maxBatchKeys {
		hi := min(lo+maxBatchKeys, len(cs))
		keys := make([]string, hi-lo)
		args := make([]any, 1, 1+hi-lo)
		args[0] = ret
		for i, c := range cs[lo:hi] {
			keys[i] = s.Key(c.Group, c.ID)
			args = append(args, claimValue(c.Token))
		}
		ns, err := doneManyScript.Run(ctx, s.c, keys, args...).Int64Slice()
		if err != nil {
			return nil, err
		}
		if len(ns) != len(keys) {
			return nil, fmt.Errorf("dedupe: unexpected done batch reply of %d values for %d keys", len(ns), len(keys))
		}
		for i, n := range ns {
			if n == 0 {
				res[lo+i] = ErrLeaseLost
			}
		}
	}
	return res, nil
}

// ReleaseBatch releases many claims in one round trip, each as Release
// would. Claims that are not Claimed are ignored.
func (s *RedisStore) ReleaseBatch(ctx context.Context, cs []Claim) error {
	held := make([]Claim, 0, len(cs))
	for _, c := range cs {
		if c.Status == Claimed && c.Token != "" {
			held = append(held, c)
		}
	}
	if len(held) == 0 {
		return nil
	}
	if s.sharded() {
		_, err := s.pipeScript(ctx, releaseScript, len(held), func(i int) ([]string, []any) {
			return []string{s.Key(held[i].Group, held[i].ID)}, []any{claimValue(held[i].Token)}
		})
		return err
	}
	for lo := 0; lo < len(held); lo += maxBatchKeys {
		hi := min(lo+maxBatchKeys, len(held))
		keys := make([]string, hi-lo)
		args := make([]any, hi-lo)
		for i, c := range held[lo:hi] {
			keys[i] = s.Key(c.Group, c.ID)
			args[i] = claimValue(c.Token)
		}
		if err := releaseManyScript.Run(ctx, s.c, keys, args...).Err(); err != nil {
			return err
		}
	}
	return nil
}

// pipeScript runs script n times in one pipeline, with the keys and
// arguments of each call from args. When a node's cache lacks the script (a
// NOSCRIPT reply ran nothing), it runs the pipeline again sending the
// script's source (EVAL), which works on every node whatever it has cached
// (a SCRIPT LOAD would reach only one node of a Ring) and caches it there.
func (s *RedisStore) pipeScript(ctx context.Context, script *redis.Script, n int, args func(i int) ([]string, []any)) ([]*redis.Cmd, error) {
	for attempt := 0; ; attempt++ {
		pipe := s.c.Pipeline()
		cmds := make([]*redis.Cmd, n)
		for i := range n {
			keys, argv := args(i)
			if attempt == 0 {
				cmds[i] = script.EvalSha(ctx, pipe, keys, argv...)
			} else {
				cmds[i] = script.Eval(ctx, pipe, keys, argv...)
			}
		}
		_, err := pipe.Exec(ctx)
		if err != nil && attempt == 0 && isNoScript(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return cmds, nil
	}
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

// Done implements Store.
func (s *RedisStore) Done(ctx context.Context, c Claim) error {
	n, err := doneScript.Run(ctx, s.c, []string{s.Key(c.Group, c.ID)}, claimValue(c.Token), s.retention.Milliseconds()).Int64()
	if err != nil {
		return err
	}
	if n == 0 {
		return ErrLeaseLost
	}
	return nil
}

// Release implements Store.
func (s *RedisStore) Release(ctx context.Context, c Claim) error {
	return releaseScript.Run(ctx, s.c, []string{s.Key(c.Group, c.ID)}, claimValue(c.Token)).Err()
}

// DoneWith records the effect and marks the claim done in one MULTI/EXEC
// transaction, only while the claim is still held (WATCH): the commands fn
// queues on the pipeliner run exactly when the mark does, so an instance
// that dies at any point leaves either both or neither. On Redis Cluster the
// effect's keys must share the claim key's hash tag ({group:id}).
//
// It returns ErrLeaseLost, having run nothing, when the claim is no longer
// held.
func (s *RedisStore) DoneWith(ctx context.Context, c Claim, fn func(ctx context.Context, pipe redis.Pipeliner) error) error {
	key := s.Key(c.Group, c.ID)
	err := s.c.Watch(ctx, func(tx *redis.Tx) error {
		v, err := tx.Get(ctx, key).Result()
		if errors.Is(err, redis.Nil) || (err == nil && v != claimValue(c.Token)) {
			return ErrLeaseLost
		}
		if err != nil {
			return err
		}
		_, err = tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			if err := fn(ctx, pipe); err != nil {
				return err
			}
			pipe.Set(ctx, key, "d", s.retention)
			return nil
		})
		return err
	}, key)
	if errors.Is(err, redis.TxFailedErr) {
		return ErrLeaseLost // the key changed under us: our lease ended
	}
	return err
}
