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

// RedisStore is a Store in Redis (standalone, Sentinel or Cluster, through
// redis.UniversalClient). A claim is one key, {prefix}{group}:{id} with the
// group and ID in a hash tag so that a handler's own keys can share its
// Cluster slot, holding "c:<token>" with the lease as its expiry, or "d" with
// the retention as its expiry. Claim, Done and Release are each one Lua
// script, one round trip; ClaimBatch pipelines many claims into one.
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
// lease in ms. Returns {status, pttl}.
var claimScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then
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

// ClaimBatch claims many events of one group in one round trip (a
// pipeline of the claim script), for handlers that work on batches. The
// claims are in the order of ids.
func (s *RedisStore) ClaimBatch(ctx context.Context, group string, ids []string, lease time.Duration) ([]Claim, error) {
	if lease < time.Millisecond {
		return nil, fmt.Errorf("%w: lease %v under 1ms", ErrConfig, lease)
	}
	claims := make([]Claim, len(ids))
	for attempt := 0; ; attempt++ {
		pipe := s.c.Pipeline()
		cmds := make([]*redis.Cmd, len(ids))
		for i, id := range ids {
			claims[i] = Claim{Group: group, ID: id, Token: NewToken()}
			cmds[i] = claimScript.EvalSha(ctx, pipe, []string{s.Key(group, id)}, claimValue(claims[i].Token), lease.Milliseconds())
		}
		_, err := pipe.Exec(ctx)
		if err != nil && attempt == 0 && isNoScript(err) {
			// The script cache was empty (a restart, a failover); load it
			// and run again: a NOSCRIPT reply ran nothing.
			if err := claimScript.Load(ctx, s.c).Err(); err != nil {
				return nil, err
			}
			continue
		}
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
