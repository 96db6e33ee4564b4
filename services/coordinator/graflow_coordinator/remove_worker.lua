-- Remove a worker from the registry (graflow_coordinator.workers), once its consumers are deleted.
-- KEYS: workers zset, worker hash (the registry's slot). ARGV: worker id, '1' = only if marked
-- dead. 1 = removed, 0 = the worker came back (it is not marked dead any more).
if ARGV[2] == '1' and redis.call('HGET', KEYS[2], 'dead') ~= '1' then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
