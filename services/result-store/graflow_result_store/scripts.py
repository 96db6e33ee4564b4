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
