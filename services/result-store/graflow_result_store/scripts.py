"""Lua scripts of the result-store: each operation is one atomic round trip to Redis.

Results of a run live in two hashes with the same hash tag: ``gf:res:{R}`` (node -> NodeResult
bytes, readable with a plain HMGET) and ``gf:res:{R}:attempt`` (node -> attempt of the stored
result). Lua can't parse protobuf, so the attempt that fences writes is kept beside the value.

Channels use the same pattern: ``gf:chan:{R}`` (key -> Payload bytes) and ``gf:chan:{R}:exp``
(key -> expiry as Unix ms, only for entries written with a TTL). Redis 7.0 has no per-field TTL, so
an expired entry is treated as missing by every read and deleted lazily by the script that meets
it; the whole channel still expires with the run's retention. Scripts take "now" from Redis ``TIME``
so that every replica of the service agrees on expiry.
"""

from __future__ import annotations

# KEYS: per item, the result hash then the attempt hash.
# ARGV: retention seconds, then per item node id, attempt, NodeResult bytes.
# Returns per item 1 = stored, 2 = duplicate (same attempt kept), 3 = stale (newer attempt stored).
PUT_RESULTS = """
local ttl = tonumber(ARGV[1])
local out = {}
local expiring = {}  -- each written hash gets its EXPIRE once (a batch is mostly one run)
local count = (#ARGV - 1) / 3
for i = 1, count do
  local results, attempts = KEYS[2 * i - 1], KEYS[2 * i]
  local node, attempt, value = ARGV[3 * i - 1], tonumber(ARGV[3 * i]), ARGV[3 * i + 1]
  local stored = tonumber(redis.call('HGET', attempts, node))
  if stored == nil or stored < attempt then
    redis.call('HSET', results, node, value)
    redis.call('HSET', attempts, node, attempt)
    if not expiring[results] then
      expiring[results] = true
      redis.call('EXPIRE', results, ttl)
      redis.call('EXPIRE', attempts, ttl)
    end
    out[i] = 1
  elseif stored == attempt then
    out[i] = 2
  else
    out[i] = 3
  end
end
return out
"""

_NOW_MS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function expired(key)
  local at = redis.call('HGET', KEYS[2], key)
  if at and tonumber(at) <= now then
    redis.call('HDEL', KEYS[1], key)
    redis.call('HDEL', KEYS[2], key)
    return true
  end
  return false
end
"""

# KEYS: channel hash, expiry hash. ARGV: keys. Returns a flat list key, value for live entries.
CHANNEL_GET = (
    _NOW_MS
    + """
local out = {}
for _, key in ipairs(ARGV) do
  local value = redis.call('HGET', KEYS[1], key)
  if value and not expired(key) then
    out[#out + 1] = key
    out[#out + 1] = value
  end
end
return out
"""
)

# KEYS: channel hash, expiry hash. ARGV: ttl ms (0 = none), retention s, then key, value pairs.
# Writing without a TTL clears an earlier TTL of that key (like SET).
CHANNEL_SET = (
    _NOW_MS
    + """
local ttl_ms, retention = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  if ttl_ms > 0 then
    redis.call('HSET', KEYS[2], ARGV[i], now + ttl_ms)
  else
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
redis.call('EXPIRE', KEYS[1], retention)
redis.call('EXPIRE', KEYS[2], retention)
return 1
"""
)

# KEYS: channel hash, expiry hash. ARGV: keys. Returns how many live entries were deleted.
CHANNEL_DELETE = (
    _NOW_MS
    + """
local deleted = 0
for _, key in ipairs(ARGV) do
  if redis.call('HEXISTS', KEYS[1], key) == 1 and not expired(key) then
    redis.call('HDEL', KEYS[1], key)
    redis.call('HDEL', KEYS[2], key)
    deleted = deleted + 1
  end
end
return deleted
"""
)

# KEYS: channel hash, expiry hash. Returns the live keys.
CHANNEL_KEYS = (
    _NOW_MS
    + """
local out = {}
for _, key in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not expired(key) then
    out[#out + 1] = key
  end
end
return out
"""
)

# Lua can't parse protobuf in general, but a Payload has two length-delimited fields (1 content
# type, 2 data), so the update script reads and writes them itself. List operations splice JSON
# text (existing elements are never re-encoded, so their numbers and empty objects stay as sent);
# ADD parses the stored number and writes it back with 17 significant digits.
_PAYLOAD = """
local function varint(n)
  local out = {}
  repeat
    local b = n % 128
    n = math.floor(n / 128)
    if n > 0 then b = b + 128 end
    out[#out + 1] = string.char(b)
  until n == 0
  return table.concat(out)
end
local function payload_json(raw)  -- the JSON text of a Payload, or nil when it is not JSON
  local pos, content_type, data = 1, '', ''
  while pos <= #raw do
    local tag = string.byte(raw, pos)
    pos = pos + 1
    local len, shift, b = 0, 1, 128
    while b >= 128 do
      b = string.byte(raw, pos)
      if b == nil then return nil end
      pos = pos + 1
      len = len + (b % 128) * shift
      shift = shift * 128
    end
    local field = string.sub(raw, pos, pos + len - 1)
    pos = pos + len
    if tag == 10 then content_type = field elseif tag == 18 then data = field else return nil end
  end
  if content_type ~= '' and content_type ~= 'application/json' then return nil end
  return data
end
local function payload_of(json)
  return string.char(18) .. varint(#json) .. json
end
"""

# KEYS: channel hash, expiry hash. ARGV: key, operation (1 append, 2 prepend, 3 add), JSON text of
# the value, ttl ms (0 = keep the key's expiry), retention s.
# Returns {0, new Payload bytes} or {code, ''}: 1 = the stored value is not a list, 2 = not a number.
CHANNEL_UPDATE = (
    _NOW_MS
    + _PAYLOAD
    + """
local key, op, value = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local ttl_ms, retention = tonumber(ARGV[4]), tonumber(ARGV[5])
local raw = redis.call('HGET', KEYS[1], key)
local current = nil
if raw and not expired(key) then
  current = payload_json(raw)
  if current == nil then return {op == 3 and 2 or 1, ''} end
end
local updated
if op == 3 then
  local number = 0
  if current then
    if not string.match(current, '^%s*%-?%d+%.?%d*[eE]?[-+]?%d*%s*$') then return {2, ''} end
    number = tonumber(current)
    if number == nil then return {2, ''} end
  end
  local sum = number + tonumber(value)
  if sum == math.floor(sum) and math.abs(sum) < 2 ^ 53 then
    updated = string.format('%d', sum)
  else
    updated = string.format('%.17g', sum)
  end
else
  if current == nil then
    updated = '[' .. value .. ']'
  else
    local inner = string.match(current, '^%s*%[(.*)%]%s*$')
    if inner == nil then return {1, ''} end
    if string.match(inner, '^%s*$') then
      updated = '[' .. value .. ']'
    elseif op == 1 then
      updated = '[' .. inner .. ',' .. value .. ']'
    else
      updated = '[' .. value .. ',' .. inner .. ']'
    end
  end
end
local stored = payload_of(updated)
redis.call('HSET', KEYS[1], key, stored)
if ttl_ms > 0 then
  redis.call('HSET', KEYS[2], key, now + ttl_ms)
end
redis.call('EXPIRE', KEYS[1], retention)
redis.call('EXPIRE', KEYS[2], retention)
return {0, stored}
"""
)
