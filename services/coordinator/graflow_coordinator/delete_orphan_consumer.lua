-- Delete an orphaned consumer (graflow_coordinator.workers).
-- KEYS: workers zset, queue stream. ARGV: consumer, group. Deletes a consumer that is not a
-- registered worker and has nothing pending. 1 = deleted.
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[2], ARGV[2], '-', '+', 1, ARGV[1])
if not ok or #pending > 0 then return 0 end
pcall(redis.call, 'XGROUP', 'DELCONSUMER', KEYS[2], ARGV[2], ARGV[1])
return 1
