-- Workers' heartbeats, one or a batch (graflow_coordinator.workers).
-- KEYS: workers zset, then one worker hash per worker. ARGV: now ms, then per worker its id and
-- in-flight count. Returns per worker 1 = lease renewed, 0 = unknown or declared dead.
local renewed = {}
for i = 2, #KEYS do
  local id, in_flight = ARGV[2 * i - 2], ARGV[2 * i - 1]
  if redis.call('ZSCORE', KEYS[1], id) and redis.call('HGET', KEYS[i], 'dead') ~= '1' then
    redis.call('ZADD', KEYS[1], ARGV[1], id)
    redis.call('HSET', KEYS[i], 'in_flight', in_flight, 'last_heartbeat_ms', ARGV[1])
    renewed[#renewed + 1] = 1
  else
    renewed[#renewed + 1] = 0
  end
end
return renewed
