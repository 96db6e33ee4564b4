-- Remove a worker (graflow_coordinator.workers).
-- KEYS: workers zset, worker hash, queue streams... ARGV: worker id, group, '1' = only if marked
-- dead. Deletes the worker's consumer from every group and the worker from the registry, unless a
-- consumer still has pending entries (-1) or the worker came back (0). 1 = removed.
if ARGV[3] == '1' and redis.call('HGET', KEYS[2], 'dead') ~= '1' then return 0 end
for i = 3, #KEYS do
  local ok, pending = pcall(redis.call, 'XPENDING', KEYS[i], ARGV[2], '-', '+', 1, ARGV[1])
  if ok and #pending > 0 then return -1 end
end
for i = 3, #KEYS do
  pcall(redis.call, 'XGROUP', 'DELCONSUMER', KEYS[i], ARGV[2], ARGV[1])
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
