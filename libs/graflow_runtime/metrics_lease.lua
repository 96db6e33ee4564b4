-- The fleet-metrics lease (graflow_runtime.fleet): take it when nobody holds it, renew it when the
-- caller does. KEYS[1] the lease; ARGV[1] the caller's holder id, ARGV[2] its time to live in ms.
-- Returns 1 when the caller holds the lease now, 0 when another replica does.
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
