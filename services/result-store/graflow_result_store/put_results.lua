-- Store a batch of results; the highest attempt wins (graflow_result_store.scripts).
-- KEYS: per item, the result hash then the attempt hash.
-- ARGV: retention seconds, then per item node id, attempt, NodeResult bytes.
-- Returns per item 1 = stored, 2 = duplicate (same attempt kept), 3 = stale (newer attempt stored).
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
