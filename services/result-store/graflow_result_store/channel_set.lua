-- KEYS: channel hash, expiry hash. ARGV: ttl ms (0 = none), retention s, then key, value pairs.
-- Writing without a TTL clears an earlier TTL of that key (like SET).
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
