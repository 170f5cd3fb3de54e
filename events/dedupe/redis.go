package dedupe

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/internal/redisonce"
)

// RedisConfig configures a RedisStore. Zero fields mean the defaults.
//
// Prefix, Retention and Shards name the hashes an event's records are in
// (and Shards the slot of RedisStore.Key), so every instance of a group must
// use the same values: an instance with others neither sees the others'
// claims and done marks nor is seen by them, so that during a rolling
// change of one of them an event may run on two instances at once, and
// after it the done marks kept so far are forgotten.
type RedisConfig struct {
	// Prefix starts every key; zero means "dedupe:".
	Prefix string
	// Retention is how long a done event is remembered at least;
	// redeliveries later than that run again. Records are kept for up to
	// three times as long (they expire by generation, see RedisStore). It
	// must be at least the longest lease of a claim (Config.Lease): a claim
	// is a record too, read only for a generation after the one it was
	// written in, so a longer lease could be taken over while it holds, and
	// Claim refuses one (ErrConfig). Zero means 7 days; at least 1ms.
	Retention time.Duration
	// Shards is how many hashes a group's records are spread over (on a
	// Redis Cluster, how many hash slots). More shards make each hash
	// smaller, so that a generation expiring frees less at once, and spread
	// a busy group over a Cluster's nodes; fewer make a batch cheaper. Zero
	// means 16; at most 1024.
	Shards int
}

// generations is how many generations of a shard a lookup reads: a
// generation lasts the retention, so a record written at t is in
// generation g = t/L and still read at t+Retention, in generation g+1.
const generations = 2

// RedisStore is a Store in Redis (standalone, Sentinel, Cluster or Ring,
// through redis.UniversalClient), and a BatchStore.
//
// # Layout
//
// A group's records are fields of a few hashes rather than a key each, so
// that a batch of claims or done marks is a handful of commands over many
// fields (an HMGET, an HSET) instead of one command per event: per event that
// costs Redis a tenth of a key write. The field is the event ID; its value
// is "d" once done, or "c:<token>:<deadline>" while claimed, the deadline
// in Unix milliseconds on Redis's clock (TIME). An event's hash is chosen
// by its shard (an FNV-1a hash of the ID, modulo Shards) and by time: each
// shard has one hash per generation, as long as the retention,
//
//	<prefix>{<group>:<shard>}:g:<generation>
//
// written only while its generation is current and expiring a generation
// after the next one ends. Every call reads the field from the current
// generation and the one before it (the newest value wins), so a done mark
// is seen for at least the retention, and memory is reclaimed a whole
// generation at a time. Expiring a big hash takes Redis time: with
// lazyfree-lazy-expire off (Redis's default before 8.0) it blocks the
// server while it frees the fields, so size Shards to keep each generation
// of a shard to a few hundred thousand events, or turn lazy freeing on.
//
// # Round trips
//
// Claim, Done and Release are each one Lua script, one round trip.
// ClaimBatch, DoneBatch and ReleaseBatch are one script call for a whole
// batch (up to 1000 events) on standalone and Sentinel, and on Cluster or
// Ring one pipeline of a call per shard. The scripts take the time from
// Redis; the store learns the offset of Redis's clock from their replies to
// name the current generation, and a call made across a generation's
// boundary by a skewed clock is refused by the script and made again for
// the generation the refusal named (one more round trip, rarely; on a
// Cluster each call follows its own node's clock).
type RedisStore struct {
	c         redis.UniversalClient
	prefix    string
	retention time.Duration
	gen       int64 // generation length, ms
	shards    uint32
	offset    atomic.Int64 // Redis's clock minus ours, ms, from the last reply
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
	if cfg.Shards < 0 || cfg.Shards > 1024 {
		return nil, fmt.Errorf("%w: Shards %d out of [1,1024]", ErrConfig, cfg.Shards)
	}
	if strings.ContainsAny(cfg.Prefix, "{}") {
		return nil, fmt.Errorf("%w: Prefix %q contains a brace", ErrConfig, cfg.Prefix)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "dedupe:"
	}
	if cfg.Retention == 0 {
		cfg.Retention = 7 * 24 * time.Hour
	}
	if cfg.Retention < time.Millisecond {
		return nil, fmt.Errorf("%w: Retention %v under 1ms", ErrConfig, cfg.Retention)
	}
	if cfg.Shards == 0 {
		cfg.Shards = 16
	}
	return &RedisStore{c: c, prefix: cfg.Prefix, retention: cfg.Retention,
		gen: cfg.Retention.Milliseconds(), shards: uint32(cfg.Shards)}, nil
}

func (s *RedisStore) shard(id string) uint32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return h.Sum32() % s.shards
}

// tag is the hash tag of a group's shard, braces included.
func (s *RedisStore) tag(group string, shard uint32) string {
	return "{" + group + ":" + strconv.FormatUint(uint64(shard), 10) + "}"
}

// checkGroup refuses a group that starts with '}': the hash tag of its keys,
// "{<group>:<shard>}", would be empty, so Redis would hash each whole key,
// putting a shard's generations in different Cluster slots (every script
// refused) or on different Ring servers (done marks lost when their
// generation ends). A '}' further in ends the tag early, within the group
// name, which keeps each shard's keys together.
func checkGroup(group string) error {
	if strings.HasPrefix(group, "}") {
		return fmt.Errorf("%w: group %q starts with '}', which empties its keys' hash tag", ErrConfig, group)
	}
	return nil
}

// Key returns a key of (group, id) in the Cluster slot where the event's
// record lives: a handler that records its effect with DoneWith names the
// effect's keys with it (Key(group, id) + ":count", say), so that they share
// the record's slot. The store itself writes no key of that name. The name
// depends on Prefix and Shards, so changing either renames the effect's keys
// too. The group is inside the hash tag, so a group that starts with '}'
// would empty it; the store refuses such a group (ErrConfig).
func (s *RedisStore) Key(group, id string) string {
	return s.prefix + s.tag(group, s.shard(id)) + ":k:" + id
}

// genKeys returns the hashes of a shard that a call in generation g reads,
// newest first.
func (s *RedisStore) genKeys(group string, shard uint32, g int64) []string {
	base := s.prefix + s.tag(group, shard) + ":g:"
	keys := make([]string, generations)
	for i := range keys {
		keys[i] = base + strconv.FormatInt(g-int64(i), 10)
	}
	return keys
}

// generation returns the current generation by our estimate of Redis's
// clock.
func (s *RedisStore) generation() int64 {
	return (time.Now().UnixMilli() + s.offset.Load()) / s.gen
}

// expiry returns when the hashes of generation g expire (Unix ms): a
// generation after the next one ends, so that a record written at its end
// is read for a whole generation more.
func (s *RedisStore) expiry(g int64) int64 {
	return (g + generations + 1) * s.gen
}

// learn records Redis's clock from a reply.
func (s *RedisStore) learn(redisNow int64) {
	s.offset.Store(redisNow - time.Now().UnixMilli())
}

// The scripts share a prologue: the time from Redis, the refusal of a call
// made for another generation ({-1, now}: the caller learns the clock and
// calls again), newest, and write.
//
// ARGV[1] is the generation the caller named the keys for, ARGV[2] the
// generation length in ms, ARGV[3] the time the current generation's hashes
// expire at ((generation + 3) * length, Unix ms; see expiry). KEYS holds,
// for each shard of the call, its generations newest first. Every script
// then takes ARGV[4] as the number of shards and, from ARGV[5 + its own
// head], for each shard n and its n IDs, then whatever per-ID values it
// takes (n of each).
//
// Most of the scripts' cost is Redis's own: writing the fields (the more
// while a hash is small enough to be a listpack, which Redis scans for each
// field), each redis.call, and converting each ID passed to or returned from
// a command between Lua and Redis. The scripts add as little per ID as they
// can: table indexing and comparing strings for equality, which is cheap
// because Lua interns them (equal strings are one object); counters instead
// of the length operator, and no tonumber, string.sub, string.match or
// concatenation per ID. Go passes what it can format itself: the expiry, and
// a token as the prefix of the values of claims that hold it, "c:<token>:"
// (mine). What comes from Redis is converted once per call (TIME, the
// deadline of a new claim) or once per run of IDs that share a value: a
// claim's value is parsed (its deadline, whether it starts with mine) only
// when it, or the token asked about, differs from the previous ID's. The IDs
// of a batch were mostly claimed by one call, all with one value, and are
// done or released with one token, so a batch parses a few values rather
// than one per ID.
const prologue = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local A = ARGV
if math.floor(now / tonumber(A[2])) ~= tonumber(A[1]) then return {-1, now} end
local G = 2
local exp = A[3]
-- newest(k, a, n): the newest value of each of the n IDs A[a+1..a+n] in
-- shard k; the previous generation is read only for IDs the current one
-- lacks.
local function newest(k, a, n)
  local v = redis.call('HMGET', KEYS[k * G + 1], unpack(A, a + 1, a + n))
  local m = 0
  for i = 1, n do
    if not v[i] then m = m + 1 end
  end
  if m == n then
    return redis.call('HMGET', KEYS[k * G + 2], unpack(A, a + 1, a + n))
  end
  if m > 0 then
    local miss, pos, j = {}, {}, 0
    for i = 1, n do
      if not v[i] then j = j + 1; miss[j] = A[a + i]; pos[j] = i end
    end
    local o = redis.call('HMGET', KEYS[k * G + 2], unpack(miss, 1, m))
    for i = 1, m do v[pos[i]] = o[i] end
  end
  return v
end
-- deadline(x): the deadline of claim value x, 0 if it has none.
local function deadline(x) return tonumber(string.match(x, ':(%d+)$')) or 0 end
-- holds(x, p): whether claim value x starts with p, the prefix "c:<token>:"
-- of a claim that holds a token.
local function holds(x, p) return string.sub(x, 1, #p) == p end
-- write(k, w, nw): sets the nw/2 pairs of field and value w[1..nw] in
-- shard k's current generation.
local function write(k, w, nw)
  if nw > 0 then
    redis.call('HSET', KEYS[k * G + 1], unpack(w, 1, nw))
    redis.call('PEXPIREAT', KEYS[k * G + 1], exp)
  end
end
`

// claimScript: ARGV[5] "c:<token>:" (mine: the prefix of the values of
// claims that hold the token), ARGV[6] the lease in ms; per shard n and n
// IDs. Returns {0, now}, then for each ID its status, and for a busy one
// also the lease it has left (ms): 1 claimed (also when the ID already
// holds this token: a retried call that partly ran), 2 done, 3 busy.
//
// A claim value is read (its deadline, whether it holds this call's token)
// once per run of IDs that share it; lx is the last value read, busy
// whether it is another claimer's live claim, left its lease left.
var claimScript = redis.NewScript(prologue + `
local mine = A[5]
local val = mine .. string.format('%d', now + tonumber(A[6]))
local out, o = {0, now}, 2
local lx, busy, left = false, false, 0
local a = 7
for k = 0, tonumber(A[4]) - 1 do
  local n = tonumber(A[a])
  local v = newest(k, a, n)
  local w, nw = {}, 0
  for i = 1, n do
    local x = v[i]
    if x == 'd' then
      o = o + 1; out[o] = 2
    else
      if x and x ~= lx then
        lx = x
        local dl = deadline(x)
        busy = dl > now and not holds(x, mine)
        left = dl - now
      end
      if x and busy then
        out[o + 1] = 3; out[o + 2] = left; o = o + 2
      else
        w[nw + 1] = A[a + i]; w[nw + 2] = val; nw = nw + 2
        o = o + 1; out[o] = 1
      end
    end
  end
  write(k, w, nw)
  a = a + n + 1
end
return out
`)

// doneScript: ARGV[5] "1" to mark every ID done, held or not (DoneBatch:
// the effects happened); per shard n, n IDs and the n prefixes of their
// tokens' claims ("c:<token>:", mine). Returns {0, now}, then for each ID 1
// when the claim was held and is now done, 2 when it was done already, 0
// when the claim had been lost (marked done only with ARGV[5] "1"). A claim
// value is read once per run of IDs that share it and their token (lx, lp;
// held the answer).
var doneScript = redis.NewScript(prologue + `
local force = A[5] == '1'
local out, o = {0, now}, 2
local lx, lp, held = false, false, false
local a = 6
for k = 0, tonumber(A[4]) - 1 do
  local n = tonumber(A[a])
  local v = newest(k, a, n)
  local w, nw = {}, 0
  for i = 1, n do
    local x, r = v[i], 0
    if x == 'd' then
      r = 2
    elseif x then
      local p = A[a + n + i]
      if x ~= lx or p ~= lp then
        lx, lp = x, p
        held = holds(x, p) and deadline(x) > now
      end
      if held then r = 1 end
    end
    if r == 1 or (r == 0 and force) then w[nw + 1] = A[a + i]; w[nw + 2] = 'd'; nw = nw + 2 end
    o = o + 1; out[o] = r
  end
  write(k, w, nw)
  a = a + 2 * n + 1
end
return out
`)

// markScript: per shard n and n pairs of ID and "d". Marks every ID done,
// unread: for claims the caller knows are held (their leases have not
// ended, and nobody else can take a claim before then). Returns {0, now}.
var markScript = redis.NewScript(prologue + `
local a = 5
for k = 0, tonumber(A[4]) - 1 do
  local n = tonumber(A[a])
  redis.call('HSET', KEYS[k * G + 1], unpack(A, a + 1, a + 2 * n))
  redis.call('PEXPIREAT', KEYS[k * G + 1], exp)
  a = a + 2 * n + 1
end
return {0, now}
`)

// releaseScript: per shard n, n IDs and the n prefixes of their tokens'
// claims ("c:<token>:", mine). Deletes each ID's claim where it holds the
// token, in every generation. Returns {0, now}. A value is read once per
// run of IDs that share it and their token (lx, lp; held the answer).
var releaseScript = redis.NewScript(prologue + `
local lx, lp, held = false, false, false
local a = 5
for k = 0, tonumber(A[4]) - 1 do
  local n = tonumber(A[a])
  for g = 1, G do
    local v = redis.call('HMGET', KEYS[k * G + g], unpack(A, a + 1, a + n))
    local d, nd = {}, 0
    for i = 1, n do
      local x = v[i]
      if x and x ~= 'd' then
        local p = A[a + n + i]
        if x ~= lx or p ~= lp then
          lx, lp = x, p
          held = holds(x, p)
        end
        if held then nd = nd + 1; d[nd] = A[a + i] end
      end
    end
    if nd > 0 then redis.call('HDEL', KEYS[k * G + g], unpack(d, 1, nd)) end
  end
  a = a + 2 * n + 1
end
return {0, now}
`)

// maxBatchKeys bounds the IDs of one script call, so one call does not hold
// the server for long.
const maxBatchKeys = 1000

// sharded reports whether keys of different shards may live on different
// nodes, so that one script cannot take them all. Only a *redis.Client
// (standalone, or Sentinel's failover client) sends every key to one
// server; a Cluster or a Ring shards by key, and any other UniversalClient
// (an AutoPipeliner over either, a wrapper) is treated as sharded, since a
// script over keys of several shards would run on the first key's node and
// write the others where the other calls never look.
func (s *RedisStore) sharded() bool {
	_, ok := s.c.(*redis.Client)
	return !ok
}

// item is one event of a call: its place in the caller's slice, its ID and
// (for done and release) its token.
type item struct {
	at        int
	id, token string
}

// call is one script call over some shards of a group.
type call struct {
	shards []uint32
	items  [][]item // per shard
}

// plan groups items by shard into script calls: one call per shard on a
// sharded client, else as few calls as fit maxBatchKeys.
func (s *RedisStore) plan(group string, items []item) []call {
	by := make(map[uint32][]item)
	var order []uint32
	for _, it := range items {
		k := s.shard(it.id)
		if _, ok := by[k]; !ok {
			order = append(order, k)
		}
		by[k] = append(by[k], it)
	}
	var calls []call
	if s.sharded() {
		for _, k := range order {
			for its := by[k]; len(its) > 0; {
				n := min(len(its), maxBatchKeys)
				calls = append(calls, call{shards: []uint32{k}, items: [][]item{its[:n]}})
				its = its[n:]
			}
		}
		return calls
	}
	var cur call
	size := 0
	for _, k := range order {
		for its := by[k]; len(its) > 0; {
			n := min(len(its), maxBatchKeys-size)
			cur.shards = append(cur.shards, k)
			cur.items = append(cur.items, its[:n])
			its = its[n:]
			if size += n; size == maxBatchKeys {
				calls = append(calls, cur)
				cur, size = call{}, 0
			}
		}
	}
	if size > 0 {
		calls = append(calls, cur)
	}
	return calls
}

// run runs script over the calls, with head the script's own arguments and
// args(its) those of each shard after its count, and returns
// each call's reply after the {0, now} head. A call refused for another
// generation is made again with the clock its reply gave.
func (s *RedisStore) run(ctx context.Context, script *redis.Script, group string, calls []call, head []any, args func(its []item) []any) ([][]int64, error) {
	out := make([][]int64, len(calls))
	todo := make([]int, len(calls))
	for i := range todo {
		todo[i] = i
	}
	// gens holds, for a call refused for another generation, the one its
	// node's clock named: on a Cluster the nodes' clocks differ, and the
	// offset learned from another node's reply (this call's or a
	// concurrent one's) may name the wrong generation again.
	var gens map[int]int64
	for attempt := 0; len(todo) > 0; attempt++ {
		if attempt == 3 {
			return nil, errors.New("dedupe: Redis's clock keeps moving across a generation boundary")
		}
		cur := s.generation()
		cmdArgs := func(i int) ([]string, []any) {
			c := calls[i]
			g, ok := gens[i]
			if !ok {
				g = cur
			}
			keys := make([]string, 0, generations*len(c.shards))
			argv := make([]any, 0, 4+len(head)+len(c.shards))
			argv = append(argv, g, s.gen, s.expiry(g), len(c.shards))
			argv = append(argv, head...)
			for j, k := range c.shards {
				keys = append(keys, s.genKeys(group, k, g)...)
				argv = append(argv, len(c.items[j]))
				argv = append(argv, args(c.items[j])...)
			}
			return keys, argv
		}
		var replies []*redis.Cmd
		if len(todo) == 1 {
			keys, argv := cmdArgs(todo[0])
			replies = []*redis.Cmd{script.Run(ctx, s.c, keys, argv...)}
		} else {
			var err error
			replies, err = s.pipeScript(ctx, script, len(todo), func(i int) ([]string, []any) { return cmdArgs(todo[i]) })
			if err != nil {
				return nil, err
			}
		}
		var again []int
		for j, cmd := range replies {
			res, err := cmd.Int64Slice()
			if err != nil {
				return nil, err
			}
			if len(res) < 2 {
				return nil, fmt.Errorf("dedupe: unexpected reply %v", res)
			}
			s.learn(res[1])
			if res[0] == -1 {
				if gens == nil {
					gens = make(map[int]int64)
				}
				gens[todo[j]] = res[1] / s.gen
				again = append(again, todo[j])
				continue
			}
			out[todo[j]] = res[2:]
		}
		todo = again
	}
	return out, nil
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

// idArgs is the per-shard arguments of the claim script: the IDs.
func idArgs(its []item) []any {
	a := make([]any, len(its))
	for i, it := range its {
		a[i] = it.id
	}
	return a
}

// tokenArgs is those of the done and release scripts: the IDs, then the
// prefixes of the values of claims that hold their tokens (mine).
func tokenArgs(its []item) []any {
	a := make([]any, 2*len(its))
	var tok, prefix string
	for i, it := range its {
		if i == 0 || it.token != tok {
			tok, prefix = it.token, mine(it.token)
		}
		a[i], a[len(its)+i] = it.id, prefix
	}
	return a
}

// mine returns the prefix of the value of a claim that holds token:
// "c:<token>:", then the deadline.
func mine(token string) string {
	return "c:" + token + ":"
}

// markArgs is those of the mark script: pairs of ID and "d".
func markArgs(its []item) []any {
	a := make([]any, 0, 2*len(its))
	for _, it := range its {
		a = append(a, it.id, "d")
	}
	return a
}

// claims runs the claim script for ids (no repeats) with one new token.
func (s *RedisStore) claims(ctx context.Context, group string, ids []string, lease time.Duration) ([]Claim, error) {
	if lease < time.Millisecond {
		return nil, fmt.Errorf("%w: lease %v under 1ms", ErrConfig, lease)
	}
	if err := checkGroup(group); err != nil {
		return nil, err
	}
	if lease > s.retention {
		// The claim would stop being read (two generations on) while
		// its lease still held, and another claimer would take it.
		return nil, fmt.Errorf("%w: lease %v longer than the store's Retention %v", ErrConfig, lease, s.retention)
	}
	token := NewToken()
	claims := make([]Claim, len(ids))
	items := make([]item, len(ids))
	for i, id := range ids {
		claims[i] = Claim{Group: group, ID: id, Token: token}
		items[i] = item{at: i, id: id}
	}
	if len(ids) == 0 {
		return claims, nil
	}
	calls := s.plan(group, items)
	sent := time.Now()
	res, err := s.run(ctx, claimScript, group, calls, []any{mine(token), lease.Milliseconds()}, idArgs)
	if err != nil {
		// Some of the claims may have been taken (a reply lost after the
		// write, one node of a Cluster failing): nobody holds their token,
		// so give them back, or a retry of this batch would find its own
		// events busy for a whole lease. The release deletes only claims
		// holding this token; if it fails too, they end with their lease.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		held := make([]Claim, len(claims))
		for i, c := range claims {
			c.Status = Claimed
			held[i] = c
		}
		_ = s.ReleaseBatch(rctx, held)
		return nil, err
	}
	for ci, c := range calls {
		r, p := res[ci], 0
		for _, its := range c.items {
			for _, it := range its {
				if p >= len(r) {
					return nil, fmt.Errorf("dedupe: unexpected claim reply of %d values", len(r))
				}
				cl := &claims[it.at]
				cl.Status = Status(r[p])
				p++
				switch cl.Status {
				case Claimed:
					// Redis holds the lease in whole ms from its
					// clock's ms, which may be up to 1ms behind.
					cl.held = sent.Add(lease.Truncate(time.Millisecond) - time.Millisecond - lease/10)
				case Busy:
					if p >= len(r) {
						return nil, fmt.Errorf("dedupe: unexpected claim reply of %d values", len(r))
					}
					cl.Remaining = time.Duration(r[p]) * time.Millisecond
					p++
				}
				if cl.Status != Claimed {
					cl.Token = ""
				}
			}
		}
	}
	return claims, nil
}

// Claim implements Store.
func (s *RedisStore) Claim(ctx context.Context, group, id string, lease time.Duration) (Claim, error) {
	cs, err := s.claims(ctx, group, []string{id}, lease)
	if err != nil {
		return Claim{}, err
	}
	return cs[0], nil
}

var _ BatchStore = (*RedisStore)(nil)

// ClaimBatch claims many events of one group in one round trip, each as
// Claim would, all with one token. The claims are in the order of ids; an
// ID repeated in ids is busy after its first claim, as a second Claim would
// report.
func (s *RedisStore) ClaimBatch(ctx context.Context, group string, ids []string, lease time.Duration) ([]Claim, error) {
	return claimUnique(group, ids, lease, func(uniq []string) ([]Claim, error) { return s.claims(ctx, group, uniq, lease) })
}

// claimUnique answers ClaimBatch with claim, called once for the IDs of ids
// without repeats, in order. A repeated ID is answered as a second Claim
// would be: not claimed twice (a store would take it again for the same
// token), but busy while the first is held.
func claimUnique(group string, ids []string, lease time.Duration, claim func(uniq []string) ([]Claim, error)) ([]Claim, error) {
	first := make(map[string]int, len(ids))
	for i, id := range ids {
		if _, dup := first[id]; !dup {
			first[id] = i
		}
	}
	if len(first) == len(ids) {
		return claim(ids)
	}
	uniq := make([]string, 0, len(first))
	for i, id := range ids {
		if first[id] == i {
			uniq = append(uniq, id)
		}
	}
	cs, err := claim(uniq)
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

// done runs the done script over cs, which must all be of one group.
func (s *RedisStore) done(ctx context.Context, group string, cs []Claim, force bool) ([]int64, error) {
	items := make([]item, len(cs))
	for i, c := range cs {
		items[i] = item{at: i, id: c.ID, token: c.Token}
	}
	calls := s.plan(group, items)
	f := "0"
	if force {
		f = "1"
	}
	res, err := s.run(ctx, doneScript, group, calls, []any{f}, tokenArgs)
	if err != nil {
		return nil, err
	}
	out := make([]int64, len(cs))
	for ci, c := range calls {
		r, p := res[ci], 0
		for _, its := range c.items {
			for _, it := range its {
				if p >= len(r) {
					return nil, fmt.Errorf("dedupe: unexpected done reply of %d values", len(r))
				}
				out[it.at] = r[p]
				p++
			}
		}
	}
	return out, nil
}

// byGroup calls fn for the claims of each group in cs, with their places.
func byGroup(cs []Claim, fn func(group string, at []int, cs []Claim) error) error {
	groups := make(map[string][]int)
	var order []string
	for i, c := range cs {
		if _, ok := groups[c.Group]; !ok {
			order = append(order, c.Group)
		}
		groups[c.Group] = append(groups[c.Group], i)
	}
	for _, g := range order {
		at := groups[g]
		sub := make([]Claim, len(at))
		for j, i := range at {
			sub[j] = cs[i]
		}
		if err := fn(g, at, sub); err != nil {
			return err
		}
	}
	return nil
}

// Done implements Store.
func (s *RedisStore) Done(ctx context.Context, c Claim) error {
	r, err := s.done(ctx, c.Group, []Claim{c}, false)
	if err != nil {
		return err
	}
	if r[0] == 0 {
		return ErrLeaseLost
	}
	return nil
}

// DoneBatch marks many claims done in one round trip. Unlike Done, it marks
// a claim done even when its lease had ended, since the caller says the
// effect happened, and reports ErrLeaseLost for it: another claimer may have
// taken it over, and its DoneWith will then refuse to record a second
// effect.
//
// Claims this store made whose leases are sure not to have ended (a tenth
// of the lease and a millisecond before its end, measured from before the
// claim was sent) are marked without being read: nobody else can have
// taken them. The others are checked.
func (s *RedisStore) DoneBatch(ctx context.Context, cs []Claim) ([]error, error) {
	res := make([]error, len(cs))
	now := time.Now()
	trusted := true
	for _, c := range cs {
		if c.Status != Claimed || !now.Before(c.held) {
			trusted = false
			break
		}
	}
	err := byGroup(cs, func(group string, at []int, sub []Claim) error {
		if trusted {
			items := make([]item, len(sub))
			for i, c := range sub {
				items[i] = item{at: i, id: c.ID}
			}
			_, err := s.run(ctx, markScript, group, s.plan(group, items), nil, markArgs)
			return err
		}
		r, err := s.done(ctx, group, sub, true)
		if err != nil {
			return err
		}
		for j, i := range at {
			if r[j] == 0 {
				res[i] = ErrLeaseLost
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// Release implements Store.
func (s *RedisStore) Release(ctx context.Context, c Claim) error {
	return s.ReleaseBatch(ctx, []Claim{{Group: c.Group, ID: c.ID, Token: c.Token, Status: Claimed}})
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
	return byGroup(held, func(group string, _ []int, sub []Claim) error {
		items := make([]item, len(sub))
		for i, c := range sub {
			items[i] = item{at: i, id: c.ID, token: c.Token}
		}
		_, err := s.run(ctx, releaseScript, group, s.plan(group, items), nil, tokenArgs)
		return err
	})
}

// doneWithScript: KEYS the claim's shard, ARGV[4] the ID, ARGV[5]
// "c:<token>:" (mine), ARGV[6] the number of commands, then for each its argument count
// and arguments. When the claim is held, runs the commands and marks the ID
// done, atomically, and returns {0, now, replies...}; else {1, now}.
var doneWithScript = redis.NewScript(prologue + `
local x = newest(0, 3, 1)[1]
if not x or x == 'd' or not holds(x, A[5]) or deadline(x) <= now then return {1, now} end
local out = {0, now}
local a = 7
for i = 1, tonumber(A[6]) do
  local n = tonumber(A[a])
  out[i + 2] = redis.call(unpack(A, a + 1, a + n))
  a = a + n + 1
end
write(0, {A[4], 'd'}, 2)
return out
`)

// ErrNoReply is set on a command queued in DoneWith whose reply DoneWith
// cannot hand back (a type other than the common ones).
var ErrNoReply = errors.New("dedupe: DoneWith keeps no reply of this command type")

// DoneWith records the effect and marks the claim done atomically, only
// while the claim is still held: the commands fn queues on the pipeliner run
// exactly when the mark does, in one Lua script with the check, so an
// instance that dies at any point leaves either both or neither, and no
// other event's writes can make it fail or retry. On Redis Cluster (and
// Ring) the effect's keys must share the record's slot: name them with
// Key(c.Group, c.ID).
//
// fn must only queue commands that a script may run (no blocking commands,
// no MULTI). Their replies are set on the commands fn got (integer, status,
// string, bool and generic ones; others get ErrNoReply). A command that
// fails inside the script stops it: the commands before it have run, the
// mark has not, as with MULTI/EXEC.
//
// It returns ErrLeaseLost, having run nothing, when the claim is no longer
// held, and an error marked events.Unavailable when Redis could not be
// reached or could not take the write, or when the reply was lost (a
// subscriber then tries the event again once it can, instead of counting
// the failure against the event). The script is never sent again once
// sent: a second run would find the first one's done mark and answer
// ErrLeaseLost for an effect that ran; the redelivery finds the event done
// instead.
func (s *RedisStore) DoneWith(ctx context.Context, c Claim, fn func(ctx context.Context, pipe redis.Pipeliner) error) error {
	pipe := s.c.Pipeline()
	if err := fn(ctx, pipe); err != nil {
		return err
	}
	cmds := pipe.Cmds()
	pipe.Discard()
	args := []any{c.ID, mine(c.Token), len(cmds)}
	for _, cmd := range cmds {
		a := cmd.Args()
		args = append(args, len(a))
		args = append(args, a...)
	}
	shard := s.shard(c.ID)
	g := s.generation()
	for try := 0; ; try++ {
		res, err := doneWithScript.Run(ctx, redisonce.Scripter{C: s.c}, s.genKeys(c.Group, shard, g), append([]any{g, s.gen, s.expiry(g)}, args...)...).Slice()
		if err != nil {
			return doneWithError(ctx, err)
		}
		if len(res) < 2 {
			return fmt.Errorf("dedupe: unexpected reply %v", res)
		}
		status, _ := res[0].(int64)
		now, _ := res[1].(int64)
		s.learn(now)
		switch status {
		case -1:
			if try == 2 {
				return errors.New("dedupe: Redis's clock keeps moving across a generation boundary")
			}
			g = now / s.gen // this node's generation, whatever others say
			continue
		case 1:
			return ErrLeaseLost
		}
		if len(res) != 2+len(cmds) {
			return fmt.Errorf("dedupe: unexpected DoneWith reply of %d values for %d commands", len(res), len(cmds))
		}
		for i, cmd := range cmds {
			setReply(cmd, res[2+i])
		}
		return nil
	}
}

// doneWithError marks err events.Unavailable unless it is the effect's own
// failure (an error reply from one of its commands, such as WRONGTYPE) or
// ctx's: a connection that failed, or a server that cannot take writes now
// (unavailableReplies: a replica after a failover, a Cluster slot moving, a
// server loading its data or out of memory), is the store's failure, which
// a subscriber waits out instead of counting it against the event.
func doneWithError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return err
	}
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return events.Unavailable(err)
	}
	if slices.Contains(unavailableReplies, redisonce.ErrorCode(err)) {
		return events.Unavailable(err)
	}
	return err
}

// unavailableReplies are the error codes of a Redis that cannot take a
// write now, whatever the write: a replica (READONLY), a server loading its
// data, a Cluster slot moving, a server busy with a script, out of memory
// (OOM), without the replicas min-replicas-to-write asks for (NOREPLICAS),
// or unable to persist (MISCONF).
var unavailableReplies = []string{"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK", "BUSY", "OOM", "NOREPLICAS", "MISCONF"}

// setAs sets v on a command through set when it is a T, else ErrNoReply
// through fail.
func setAs[T any](v any, set func(T), fail func(error)) {
	if x, ok := v.(T); ok {
		set(x)
		return
	}
	fail(ErrNoReply)
}

// setReply sets v, a reply from a script, on cmd.
func setReply(cmd redis.Cmder, v any) {
	switch c := cmd.(type) {
	case *redis.Cmd:
		c.SetVal(v)
	case *redis.IntCmd:
		setAs(v, c.SetVal, c.SetErr)
	case *redis.BoolCmd:
		switch x := v.(type) {
		case int64:
			c.SetVal(x == 1)
		case string:
			c.SetVal(x == "OK")
		case nil:
			c.SetVal(false)
		default:
			c.SetErr(ErrNoReply)
		}
	case *redis.StatusCmd:
		setAs(v, c.SetVal, c.SetErr)
	case *redis.StringCmd:
		switch x := v.(type) {
		case string:
			c.SetVal(x)
		case int64:
			c.SetVal(strconv.FormatInt(x, 10))
		case nil:
			c.SetErr(redis.Nil)
		default:
			c.SetErr(ErrNoReply)
		}
	default:
		cmd.SetErr(ErrNoReply)
	}
}
