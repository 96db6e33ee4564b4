-- Count a STATUS_CANCELED outcome of a run that has ended (invariant 11): the attempt did not run
-- (a queued delivery a worker skipped) or stopped on ctx.check_canceled(). Nothing else changes:
-- the run ended already. Fenced by a mark per node ('<node>:end' = attempt in the join hash), so a
-- redelivered outcome is not counted twice.
-- KEYS: 1-7 run keys (see common.lua).
-- ARGV: node, attempt, meta counter to increment ('skipped' | 'stopped').
-- Returns: counted | duplicate | live (the run has not ended: the caller redelivers the node) |
--          unknown_run
local status = redis.call('HGET', KEYS[K_META], 'status')
if not status then return 'unknown_run' end
if is_live(status) then return 'live' end
local mark = ARGV[1] .. ':end'
if redis.call('HGET', KEYS[K_JOIN], mark) == ARGV[2] then return 'duplicate' end
redis.call('HSET', KEYS[K_JOIN], mark, ARGV[2])
if redis.call('TTL', KEYS[K_JOIN]) == -1 then
  -- The join hash did not exist before: let it expire with the run's other keys.
  local ttl = redis.call('TTL', KEYS[K_META])
  if ttl > 0 then redis.call('EXPIRE', KEYS[K_JOIN], ttl) end
end
redis.call('HINCRBY', KEYS[K_META], ARGV[3], 1)
return 'counted'
