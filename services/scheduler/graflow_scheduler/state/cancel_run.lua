-- Cancel a run that has not ended. KEYS: 1-16 run, flow and wait keys and the ended-runs stream
-- (see common.lua).
-- ARGV: run_id, reason, now_ms, retention_s, idempotency key prefix.
-- Returns the run's status after the call ('' when the run does not exist).
local status = redis.call('HGET', KEYS[K_META], 'status')
if not status then return '' end
if not is_live(status) then return status end
finish_run(ARGV[1], 'CANCELED', ARGV[3], ARGV[4], ARGV[5], {'message', ARGV[2]}, '', ARGV[2], '')
return 'CANCELED'
