-- Delete an orphaned consumer (graflow_coordinator.workers).
-- KEYS: workers zset, queue streams (the lanes of a queue)... ARGV: consumer, group. Deletes a
-- consumer that is not a registered worker and has nothing pending in any of the streams from
-- all of them. 1 = deleted.
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
for i = 2, #KEYS do
  local ok, pending = pcall(redis.call, 'XPENDING', KEYS[i], ARGV[2], '-', '+', 1, ARGV[1])
  if ok and #pending > 0 then return 0 end
end
for i = 2, #KEYS do
  pcall(redis.call, 'XGROUP', 'DELCONSUMER', KEYS[i], ARGV[2], ARGV[1])
end
return 1
