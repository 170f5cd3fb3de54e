package redisstore

import "github.com/redis/go-redis/v9"

// Layout of a session hash:
//
//	_v   record version (HINCRBY)
//	_c   created, Unix ms on Redis's clock
//	_a   absolute deadline, Unix ms
//	_u   bound user ("" or absent: none)
//	_e   the user's revocation epoch when bound
//	_to  present only in an alias: the target ID
//	k:K  the value of key K, as "<version>:<data>"
//
// The idle deadline is the key's own expiry (PEXPIREAT), so Redis drops an
// idle session by itself. Every script takes the time from Redis (TIME), so
// all instances share one clock.

// prelude gives every script: now (ms), tostr(n), and live(m) which checks
// the absolute deadline and the user's epoch of a hash read into table m,
// deleting KEYS[1] when it is dead. KEYS[2] is always the epochs hash of the
// session's hash tag.
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

// loadScript: KEYS = session, epochs; ARGV = idle ms (0: no refresh).
// Returns nil, {'alias', target} or {'ok', idleDeadlineMs, flat hash}.
var loadScript = redis.NewScript(prelude + `
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return false end
local m = {}
for i = 1, #h, 2 do m[h[i]] = h[i + 1] end
if m['_to'] then return {'alias', m['_to']} end
if not live(m['_a'], m['_u'], m['_e']) then
  redis.call('DEL', KEYS[1])
  return false
end
local abs = tonumber(m['_a'])
local pttl = redis.call('PTTL', KEYS[1])
local idle = abs
if pttl >= 0 then idle = now + pttl end
local want = tonumber(ARGV[1])
if want > 0 then
  local ni = now + want
  if ni > abs then ni = abs end
  if ni > idle then
    redis.call('PEXPIREAT', KEYS[1], tostr(ni))
    idle = ni
  end
end
return {'ok', idle, h}
`)

// applyScript: KEYS = session, epochs, user index (or the session again);
// ARGV = id, create (0/1), absolute ms, deadline ms, created ms, idle ms,
// user, nset, ndel, nexpect, then nset key/value pairs, ndel keys, nexpect
// key/version pairs. Returns {'ok', version}, {'notfound'},
// {'conflict', key} or {'alias', target}.
var applyScript = redis.NewScript(prelude + `
local create = ARGV[2] == '1'
local abs, created
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
else
  local m = redis.call('HMGET', KEYS[1], '_to', '_a', '_u', '_e')
  if m[1] then return {'alias', m[1]} end
  if not m[2] then return {'notfound'} end
  if not live(m[2], m[3], m[4]) then
    redis.call('DEL', KEYS[1])
    return {'notfound'}
  end
  abs = tonumber(m[2])
end
local nset, ndel, nexp = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local base = 10
local ebase = base + 2 * nset + ndel
for i = 1, nexp do
  local k = ARGV[ebase + 2 * i - 1]
  local cur = redis.call('HGET', KEYS[1], 'k:' .. k)
  local v = 0
  if cur then v = tonumber(string.sub(cur, 1, string.find(cur, ':', 1, true) - 1)) end
  if v ~= tonumber(ARGV[ebase + 2 * i]) then return {'conflict', k} end
end
local ver = redis.call('HINCRBY', KEYS[1], '_v', 1)
for i = 1, nset do
  redis.call('HSET', KEYS[1], 'k:' .. ARGV[base + 2 * i - 1], tostr(ver) .. ':' .. ARGV[base + 2 * i])
end
for i = 1, ndel do
  redis.call('HDEL', KEYS[1], 'k:' .. ARGV[base + 2 * nset + i])
end
if create then
  redis.call('HSET', KEYS[1], '_a', tostr(abs), '_c', tostr(created))
end
local user = ARGV[7]
if user ~= '' and redis.call('HGET', KEYS[1], '_u') ~= user then
  local e = redis.call('HGET', KEYS[2], user) or '0'
  redis.call('HSET', KEYS[1], '_u', user, '_e', e)
  redis.call('SADD', KEYS[3], ARGV[1])
  local ittl = redis.call('PTTL', KEYS[3])
  if ittl < 0 or now + ittl < abs then
    redis.call('PEXPIREAT', KEYS[3], tostr(abs))
  end
end
local ni = now + tonumber(ARGV[6])
if ni > abs then ni = abs end
redis.call('PEXPIREAT', KEYS[1], tostr(ni))
return {'ok', ver}
`)

// aliasScript: KEYS = old session, epochs; ARGV = new ID, expected version,
// grace ms. Returns 'ok', 'notfound' or 'conflict'.
var aliasScript = redis.NewScript(prelude + `
local m = redis.call('HMGET', KEYS[1], '_to', '_a', '_u', '_e', '_v')
if m[1] or not live(m[2], m[3], m[4]) then return 'notfound' end
if tonumber(m[5] or '0') ~= tonumber(ARGV[2]) then return 'conflict' end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '_to', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 'ok'
`)

// deleteScript: KEYS = session; returns the alias target or nil.
var deleteScript = redis.NewScript(`
local to = redis.call('HGET', KEYS[1], '_to')
redis.call('DEL', KEYS[1])
return to
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
