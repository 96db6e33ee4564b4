-- Put runs back in the status index their meta names (the recovery sweep, a batch of one cell's
-- runs). Schedulers from before the status indexes end or pause runs without moving them between
-- the indexes: during a rolling upgrade the indexes drift from the meta. Atomic per batch, so a
-- run a script moves meanwhile is read and fixed with its current status, never a stale one.
-- KEYS[1 .. #statuses] the cell's status indexes, then the runs' meta keys; ARGV[1] the number of
-- statuses, ARGV[2 ..] the statuses (in the order of their indexes), then the run ids (in the
-- order of their meta keys). All keys are in the cell's slot. Only ZADD NX and ZREM (their replies
-- say whether they changed anything): the scheduler's ACL user needs no other command.
-- Returns the number of index entries added or removed.
local statuses = tonumber(ARGV[1])
local fixed = 0
for i = 1, #KEYS - statuses do
  local run_id = ARGV[1 + statuses + i]
  local meta = redis.call('HMGET', KEYS[statuses + i], 'status', 'created')
  -- An expired run (no meta) is left to the listing's pruning.
  if meta[1] then
    for s = 1, statuses do
      if ARGV[1 + s] == meta[1] then
        fixed = fixed + redis.call('ZADD', KEYS[s], 'NX', meta[2] or 0, run_id)
      else
        fixed = fixed + redis.call('ZREM', KEYS[s], run_id)
      end
    end
  end
end
return fixed
