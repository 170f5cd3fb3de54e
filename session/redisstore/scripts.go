package redisstore

import "github.com/redis/go-redis/v9"

// Layout of a session hash:
//
//	_v   record version
//	_c   created, Unix ms on Redis's clock
//	_a   absolute deadline, Unix ms
//	_s   total size of the values: the sum of len(K) + len(data) over the keys
//	     (absent in records written before it existed; counted once then)
//	_u   bound user ("" or absent: none)
//	_e   the user's revocation epoch when bound
//	_to  present only in an alias: the target ID
//	_g   in an alias: its grace deadline, Unix ms (absent in aliases written
//	     before it existed; see legacyGrace)
//	k:K  the value of key K, as "<version>:<data>"
//
// The idle deadline is the key's own expiry, never past the absolute deadline
// (an alias's expiry: never past _g), so Redis drops an idle or ended session
// by itself. Every script takes the time from Redis (TIME), or moves expiries
// relative to Redis's clock (applyFastScript), so all instances share one
// clock.
//
// Writes are scripts: the apply script's compare-and-set, size limit and
// refusal to resurrect must be atomic. Reads are not, on Redis 7 and later:
// Store.loadPlain pipelines PEXPIRE ... GT, HGETALL and PEXPIRETIME (plain
// commands, relative to Redis's clock, so no clock of ours is involved) and
// makes the checks in Go. In Redis every call from Lua costs about as much as
// a command from a client, and running a script costs more on top: the load
// script this replaced (HMGET, TIME, HGET of the epoch, PEXPIREAT ... GT,
// PEXPIRETIME, pipelined with an HGETALL) took 14.6 µs of Redis CPU per read
// in bench/cpu.sh, the plain pipeline 10.4 µs (a bare GET: 7.4 µs). A plain
// refresh cannot tell an alias from a record, nor stop at the absolute
// deadline: Load puts back an alias's expiry to _g, and caps a record's at _a
// in a second trip, in the last idle period only. The apply, delete and
// fallback load scripts therefore treat an alias whose _g has passed as gone,
// in case a Load that moved its expiry did not live to put it back.
// loadScript remains for servers before Redis 7.0 (no GT, no PEXPIRETIME).
//
// The apply script reads the fields it needs with one HMGET and writes with
// one HSET; moving a whole hash into Lua and back costs several times more
// than HGETALL itself.

// prelude gives the cold scripts (alias, sessions): now (ms), tostr(n), and
// live(a, u, e), which checks the absolute deadline a and the epoch e of user
// u against the epochs hash KEYS[2].
const prelude = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function tostr(n) return string.format('%d', n) end
local function live(a, u, e)
  if not a or now >= tonumber(a) then return false end
  if u and u ~= '' then
    local cur = redis.call('HGET', KEYS[2], u) or '0'
    if cur ~= e then return false end
  end
  return true
end
`

// loadScript is Load on servers before Redis 7.0 (Store.loadPlain on later
// ones): KEYS = session, epochs; ARGV = idle ms (0: no refresh). Checks that
// the record is live (deleting it if its absolute deadline has passed or its
// user's epoch moved), moves the idle deadline to min(now+idle, absolute) but
// never backwards, and returns the idle deadline (ms); nil when there is no
// live record; the target ID (a string) for an alias within its grace
// deadline. The caller pipelines HGETALL of KEYS[1] after it. It uses no
// command newer than Redis 2.6, so the same script runs (and is tested) on
// any version.
var loadScript = redis.NewScript(`
local m = redis.call('HMGET', KEYS[1], '_a', '_to', '_u', '_e', '_g')
if not m[1] and not m[2] then return false end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if not m[1] then
  if m[5] and now >= tonumber(m[5]) then
    redis.call('DEL', KEYS[1])
    return false
  end
  return m[2]
end
local abs = tonumber(m[1])
if now >= abs or (m[3] and m[3] ~= '' and (redis.call('HGET', KEYS[2], m[3]) or '0') ~= m[4]) then
  redis.call('DEL', KEYS[1])
  return false
end
local want = tonumber(ARGV[1])
-- No expiry (never written so) counts as past the deadline: it gets one.
local cur = abs + 1
local pttl = redis.call('PTTL', KEYS[1])
if pttl >= 0 then cur = now + pttl end
local idle = cur
if idle > abs then idle = abs end
if want > 0 then
  local ni = now + want
  if ni > abs then ni = abs end
  if ni > idle then idle = ni end
end
if idle ~= cur then redis.call('PEXPIREAT', KEYS[1], string.format('%d', idle)) end
return idle
`)

// applyScript: KEYS = session, epochs, user index (or the session again);
// ARGV = id, create (0/1), absolute ms, deadline ms, created ms, idle ms,
// user, nset, ndel, nexpect, max size (0: none), then nset key/value pairs,
// ndel keys, nexpect key/version pairs. Returns {'ok', version},
// {'notfound'}, {'conflict', key}, {'alias', target} or {'toolarge', size};
// a conflict with an empty key for a delta with expectations on an alias.
//
// One HMGET reads the record's fields and the old values of every key the
// delta names (for the compare-and-set and the size), one HSET writes.
var applyScript = redis.NewScript(`
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local function tostr(n) return string.format('%d', n) end
local function datalen(v) return #v - string.find(v, ':', 1, true) end
local chunk = 1000
local nset, ndel, nexp = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local maxsize = tonumber(ARGV[11])
local base = 11
local dbase = base + 2 * nset
local ebase = dbase + ndel
local create = ARGV[2] == '1'
local abs, created, ver, size, olduser
local old = {}
if create then
  if redis.call('EXISTS', KEYS[1]) == 1 then return {'conflict', ''} end
  if tonumber(ARGV[4]) > 0 then
    abs = tonumber(ARGV[4])
    created = tonumber(ARGV[5])
  else
    abs = now + tonumber(ARGV[3])
    created = now
  end
  if now >= abs then return {'notfound'} end
  ver, size = 1, 0
else
  local f = {'_a', '_to', '_u', '_e', '_v', '_s'}
  for i = 1, nset do f[#f + 1] = 'k:' .. ARGV[base + 2 * i - 1] end
  for i = 1, ndel do f[#f + 1] = 'k:' .. ARGV[dbase + i] end
  for i = 1, nexp do f[#f + 1] = 'k:' .. ARGV[ebase + 2 * i - 1] end
  if #f <= chunk then
    old = redis.call('HMGET', KEYS[1], unpack(f))
  else
    for i = 1, #f, chunk do
      local part = redis.call('HMGET', KEYS[1], unpack(f, i, math.min(i + chunk - 1, #f)))
      for j = 1, #part do old[i + j - 1] = part[j] end
    end
  end
  if not old[1] then
    if old[2] then
      local g = redis.call('HGET', KEYS[1], '_g')
      if g and now >= tonumber(g) then
        -- A Load moved the alias's expiry and did not put it back.
        redis.call('DEL', KEYS[1])
        return {'notfound'}
      end
      -- Expected versions were read from the record before it was copied
      -- to the target, whose versions start again: checked there, a stale
      -- one could match. The caller reads again, through the alias.
      if nexp > 0 then return {'conflict', ''} end
      return {'alias', old[2]}
    end
    return {'notfound'}
  end
  abs = tonumber(old[1])
  olduser = old[3]
  if now >= abs or (olduser and olduser ~= '' and (redis.call('HGET', KEYS[2], olduser) or '0') ~= old[4]) then
    redis.call('DEL', KEYS[1])
    return {'notfound'}
  end
  ver = tonumber(old[5] or '0') + 1
  size = tonumber(old[6])
  if not size then
    size = 0
    local h = redis.call('HGETALL', KEYS[1])
    for i = 1, #h, 2 do
      if string.sub(h[i], 1, 2) == 'k:' then size = size + #h[i] - 2 + datalen(h[i + 1]) end
    end
  end
end
local ooff = 6
for i = 1, nexp do
  local cur = old[ooff + nset + ndel + i]
  local v = 0
  if cur then v = tonumber(string.sub(cur, 1, string.find(cur, ':', 1, true) - 1)) end
  if v ~= tonumber(ARGV[ebase + 2 * i]) then return {'conflict', ARGV[ebase + 2 * i - 1]} end
end
for i = 1, nset do
  local o = old[ooff + i]
  if o then size = size - #ARGV[base + 2 * i - 1] - datalen(o) end
  size = size + #ARGV[base + 2 * i - 1] + #ARGV[base + 2 * i]
end
if ndel > 0 then
  local gone = {}
  for i = 1, ndel do
    local k, o = ARGV[dbase + i], old[ooff + nset + i]
    if o and not gone[k] then
      gone[k] = true
      size = size - #k - datalen(o)
    end
  end
end
if maxsize > 0 and nset > 0 and size > maxsize then return {'toolarge', size} end
local prefix = tostr(ver) .. ':'
local w = {'_v', tostr(ver), '_s', tostr(size)}
if create then
  w[5], w[6], w[7], w[8] = '_a', tostr(abs), '_c', tostr(created)
end
for i = 1, nset do
  w[#w + 1] = 'k:' .. ARGV[base + 2 * i - 1]
  w[#w + 1] = prefix .. ARGV[base + 2 * i]
  if #w >= chunk then
    redis.call('HSET', KEYS[1], unpack(w))
    w = {}
  end
end
if #w > 0 then redis.call('HSET', KEYS[1], unpack(w)) end
if ndel > 0 then
  local d = {}
  for i = 1, ndel do
    d[#d + 1] = 'k:' .. ARGV[dbase + i]
    if #d >= chunk or i == ndel then
      redis.call('HDEL', KEYS[1], unpack(d))
      d = {}
    end
  end
end
local user = ARGV[7]
if user ~= '' and olduser ~= user then
  local e = redis.call('HGET', KEYS[2], user) or '0'
  redis.call('HSET', KEYS[1], '_u', user, '_e', e)
  redis.call('SADD', KEYS[3], ARGV[1])
  local ittl = redis.call('PTTL', KEYS[3])
  if ittl < 0 or now + ittl < abs then
    redis.call('PEXPIREAT', KEYS[3], tostr(abs))
  end
end
local ni = now + tonumber(ARGV[6])
local keep = false
if not create then
  -- Never backwards: another instance may keep a longer idle timeout; then
  -- the expiry is left as it is (now + PTTL only estimates it, to the ms).
  -- A Load's refresh past the absolute deadline is capped below.
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl >= 0 and now + pttl >= ni then keep, ni = true, now + pttl end
end
if ni > abs then keep, ni = false, abs end
if not keep then redis.call('PEXPIREAT', KEYS[1], tostr(ni)) end
return {'ok', ver}
`)

// applyFastScript is applyScript for the common write on Redis 7 and later:
// no Create, no user to bind, a record (not an alias) that has _s. KEYS =
// session, epochs; ARGV = idle ms, skip (see below), max size (0: none),
// the counts (three bytes: the numbers of keys set, deleted and expected,
// each at most 255), then the field names ("k:" and the key) of the keys
// set, deleted and expected, in that order, then the values set and the
// versions expected, in the same orders. The field names come ready and in
// one run of ARGV, so the script builds no name and passes them to HMGET and
// HDEL as they are: it reads the record's fields and the old values of every
// key the delta names with one HMGET and writes with one HSET. The same
// replies as applyScript, except the version alone (an integer) for ok, and
// {'slow'} (nothing done: run applyScript) for anything else, {'old'}
// (nothing done) on a server before Redis 7.0.
//
// It takes no TIME and reads no PTTL: the idle deadline moves on Redis's
// clock with PEXPIRE ... GT (never backwards), then PEXPIREAT _a LT caps it
// at the absolute deadline, which deletes the key if _a has passed (then the
// write is refused as applyScript refuses it). A key without expiry (never
// written so) gets the absolute deadline. When skip is not 0 the expiry is
// left alone if the absolute deadline _a comes after it (the Store moved
// the idle deadline within its resolution, see WithIdleResolution, and
// passes the time on its clock before which _a would be too near to skip).
// Every refusal that needs no clock comes before the expiry moves, so a
// refused delta leaves the record as it was (a refusal reads TIME, to answer
// not found past _a).
//
// Lua in Redis is slow enough that its shape shows in the write's cost.
// Counted with callgrind on redis-server 7.0 (instructions per EVALSHA,
// pipelined, docs/benchmarks.md): an empty script costs about 21,000, each
// redis.call about 5,000 more, each field HMGET names about 2,300, and each
// conversion between a string and a number 1,300 to 1,800 (strtod and
// sprintf), where a comparison of two strings or a string.byte costs a few
// hundred. So the script converts only what it must do arithmetic on (_s,
// _v and the max size, that one only when there is a limit), takes the
// counts as bytes, compares _a with skip as the decimal strings both are,
// formats the new version once, and asks for _to (an alias) only when _a is
// missing: 80,900 Redis instructions per one-key write before, 72,400 after
// (BenchmarkRedisInstructions, through bench/rediscost.sh).
// The caller keeps the delta small enough that no call needs chunks.
var applyFastScript = redis.NewScript(`
if not redis.REDIS_VERSION_NUM then return {'old'} end
local A, call, find = ARGV, redis.call, string.find
local nset, ndel, nexp = string.byte(A[4], 1, 3)
local nk = nset + ndel + nexp
local key = KEYS[1]
local old = call('HMGET', key, '_a', '_u', '_e', '_v', '_s', unpack(A, 5, 4 + nk))
local abs = old[1]
if not abs then
  if call('HEXISTS', key, '_to') == 1 then return {'slow'} end
  return {'notfound'}
end
local size = tonumber(old[5])
if not size then return {'slow'} end
local olduser = old[2]
if olduser and olduser ~= '' and (call('HGET', KEYS[2], olduser) or '0') ~= old[3] then
  call('DEL', key)
  return {'notfound'}
end
-- Refusals wait for the size, a conflict first: no closure to build on
-- every write. Versions are compared as written: decimal, no leading zero.
local refused
local vb = 4 + nk
for i = 1, nexp do
  local cur = old[5 + nset + ndel + i]
  local v = '0'
  if cur then v = string.sub(cur, 1, find(cur, ':', 1, true) - 1) end
  if v ~= A[vb + nset + i] then
    refused = {'conflict', string.sub(A[4 + nset + ndel + i], 3)}
    break
  end
end
-- The size counts a key without its 'k:' and a value without its version.
for i = 1, nset do
  local o = old[5 + i]
  if o then size = size - #A[4 + i] + 2 - #o + find(o, ':', 1, true) end
  size = size + #A[4 + i] - 2 + #A[vb + i]
end
if ndel > 0 then
  local gone = {}
  for i = 1, ndel do
    local k, o = A[4 + nset + i], old[5 + nset + i]
    if o and not gone[k] then
      gone[k] = true
      size = size - #k + 2 - #o + find(o, ':', 1, true)
    end
  end
end
if not refused and nset > 0 and A[3] ~= '0' and size > tonumber(A[3]) then refused = {'toolarge', size} end
if refused then
  -- A refusal of a record past its absolute deadline (which a Load that did
  -- not live to cap its refresh can leave) is applyScript's: not found.
  local t = call('TIME')
  if t[1] * 1000 + math.floor(t[2] / 1000) >= tonumber(abs) then
    call('DEL', key)
    return {'notfound'}
  end
  return refused
end
-- _a and skip are both milliseconds in decimal without a leading zero:
-- the shorter is the smaller, and of two as long, the first in order.
local skip = A[2]
if skip == '0' or #abs < #skip or (#abs == #skip and abs <= skip) then
  call('PEXPIRE', key, A[1], 'GT')
  if call('PEXPIREAT', key, abs, 'LT') == 1 and call('EXISTS', key) == 0 then
    return {'notfound'}
  end
end
local ver = (old[4] or 0) + 1
local vs = tostring(ver)
local prefix = vs .. ':'
if nset == 1 then
  call('HSET', key, '_v', vs, '_s', size, A[5], prefix .. A[vb + 1])
else
  local w = {'_v', vs, '_s', size}
  for i = 1, nset do
    w[3 + 2 * i], w[4 + 2 * i] = A[4 + i], prefix .. A[vb + i]
  end
  call('HSET', key, unpack(w))
end
if ndel > 0 then call('HDEL', key, unpack(A, 5 + nset, 4 + nset + ndel)) end
return ver
`)

// aliasScript: KEYS = old session, epochs; ARGV = new ID, expected version,
// grace ms. Returns 'ok', 'notfound' or 'conflict'. The alias keeps its
// grace deadline in _g (see the layout above) and expires then.
var aliasScript = redis.NewScript(prelude + `
local m = redis.call('HMGET', KEYS[1], '_to', '_a', '_u', '_e', '_v')
if m[1] or not live(m[2], m[3], m[4]) then return 'notfound' end
if tonumber(m[5] or '0') ~= tonumber(ARGV[2]) then return 'conflict' end
local g = tostr(now + tonumber(ARGV[3]))
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '_to', ARGV[1], '_g', g)
redis.call('PEXPIREAT', KEYS[1], g)
return 'ok'
`)

// deleteScript: KEYS = session; ARGV = '1' to delete whatever the key
// holds, else '0'. With '0', a live alias is left in place and its target
// returned (the caller deletes the target first, then the alias with '1');
// anything else (a record, an alias past its grace deadline, which is gone)
// is deleted, and the reply is nil.
var deleteScript = redis.NewScript(`
if ARGV[1] == '0' then
  local m = redis.call('HMGET', KEYS[1], '_to', '_g')
  local to = m[1]
  if to and m[2] then
    local t = redis.call('TIME')
    if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) >= tonumber(m[2]) then to = false end
  end
  if to then return to end
end
redis.call('DEL', KEYS[1])
return false
`)

// sessionsScript: KEYS = index, epochs, then one session key per member;
// ARGV = user, then the member IDs in the same order. Removes dead members
// and returns the live ones.
var sessionsScript = redis.NewScript(prelude + `
local out = {}
for i = 3, #KEYS do
  local m = redis.call('HMGET', KEYS[i], '_to', '_a', '_u', '_e')
  if not m[1] and m[3] == ARGV[1] and live(m[2], m[3], m[4]) then
    table.insert(out, ARGV[i - 1])
  else
    redis.call('SREM', KEYS[1], ARGV[i - 1])
  end
end
return out
`)

// destroyUserScript: KEYS = index, epochs, then the members' session keys;
// ARGV = user. Bumps the user's epoch (which kills sessions the index
// missed) and deletes the indexed sessions and the index.
var destroyUserScript = redis.NewScript(`
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
for i = 3, #KEYS do
  local u = redis.call('HGET', KEYS[i], '_u')
  if u == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
redis.call('DEL', KEYS[1])
return 'ok'
`)
