-- KEYS: channel hash, expiry hash. ARGV: ttl ms (0 = none), retention s, most keys of a run, then
-- key, value pairs.
-- Writing without a TTL clears an earlier TTL of that key (like SET).
-- Returns 1, or {0, keys it would make} when the run would hold more keys than allowed (nothing is
-- written).
local ttl_ms, retention, max_keys = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local size = redis.call('HLEN', KEYS[1])
for i = 4, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then size = size + 1 end
end
if size > max_keys then return {0, size} end
for i = 4, #ARGV, 2 do
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
