-- Put runs back in the status index their meta names (the recovery sweep, a batch of one cell's
-- runs). Schedulers from before the status indexes end or pause runs without moving them between
-- the indexes: during a rolling upgrade the indexes drift from the meta. Atomic per batch, so a
-- run a script moves meanwhile is read and fixed with its current status, never a stale one.
-- KEYS[1] the cell's listing gf:runs (run id -> created ms, the score used when the meta has
-- none), KEYS[2 .. 1 + #statuses] the cell's status indexes, then the runs' meta keys; ARGV[1] the
-- number of statuses, ARGV[2 ..] the statuses (in the order of their indexes), then the run ids
-- (in the order of their meta keys). All keys are in the cell's slot.
-- Returns the number of index entries added or removed.
local statuses = tonumber(ARGV[1])
local fixed = 0
for i = 1, #KEYS - 1 - statuses do
  local run_id = ARGV[1 + statuses + i]
  local meta = redis.call('HMGET', KEYS[1 + statuses + i], 'status', 'created')
  -- An expired run (no meta) is left to the listing's pruning.
  if meta[1] then
    local created = meta[2] or redis.call('ZSCORE', KEYS[1], run_id) or 0
    for s = 1, statuses do
      local listed = redis.call('ZSCORE', KEYS[1 + s], run_id)
      if ARGV[1 + s] == meta[1] then
        if not listed then
          redis.call('ZADD', KEYS[1 + s], created, run_id)
          fixed = fixed + 1
        end
      elseif listed then
        redis.call('ZREM', KEYS[1 + s], run_id)
        fixed = fixed + 1
      end
    end
  end
end
return fixed
