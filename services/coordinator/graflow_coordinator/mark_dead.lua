-- Declare a worker dead (graflow_coordinator.workers).
-- KEYS: workers zset, worker hash. ARGV: worker id, cutoff ms, now ms. Marks the worker dead when
-- its last heartbeat is at or before the cutoff; returns its queues (JSON) or nil if it is alive.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
if redis.call('HGET', KEYS[2], 'dead') ~= '1' then
  redis.call('HSET', KEYS[2], 'dead', '1', 'dead_at_ms', ARGV[3])
end
return redis.call('HGET', KEYS[2], 'queues') or '[]'
