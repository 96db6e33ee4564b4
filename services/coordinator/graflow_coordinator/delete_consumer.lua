-- Delete a consumer from the groups of the lanes of one cell (graflow_coordinator.workers).
-- KEYS: queue streams of one cell (one slot). ARGV: consumer, group. Deletes the consumer from
-- every stream's group unless it has entries pending in one of them (-1: nothing is deleted).
-- 1 = deleted (or it was in none).
for i = 1, #KEYS do
  local ok, pending = pcall(redis.call, 'XPENDING', KEYS[i], ARGV[2], '-', '+', 1, ARGV[1])
  if ok and #pending > 0 then return -1 end
end
for i = 1, #KEYS do
  pcall(redis.call, 'XGROUP', 'DELCONSUMER', KEYS[i], ARGV[2], ARGV[1])
end
return 1
