-- A worker's heartbeat (graflow_coordinator.workers).
-- KEYS: workers zset, worker hash. ARGV: worker id, now ms, in-flight. 1 = renewed, 0 = unknown/dead.
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if redis.call('HGET', KEYS[2], 'dead') == '1' then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], 'in_flight', ARGV[3], 'last_heartbeat_ms', ARGV[2])
return 1
