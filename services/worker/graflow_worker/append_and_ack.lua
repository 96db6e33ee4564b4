-- Append the outcomes of a commit batch and acknowledge their deliveries, atomically
-- (graflow_worker.committer).
-- KEYS[1] = gf:outcomes, KEYS[2..] = queue streams. ARGV[1] = outcome field, ARGV[2] = consumer
-- group, ARGV[3] = number of outcomes n, ARGV[4..n+3] = TaskOutcome bytes, then per queue stream (in
-- KEYS order): its number of entry ids, the ids. The first write fails on OOM before anything is
-- written, so the script is all or nothing.
local field, group, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 4, n + 3 do
  redis.call('XADD', KEYS[1], '*', field, ARGV[i])
end
local at = n + 4
for k = 2, #KEYS do
  local last = at + tonumber(ARGV[at])
  for first = at + 1, last, 1000 do  -- unpack() is bounded by the Lua stack
    redis.call('XACK', KEYS[k], group, unpack(ARGV, first, math.min(first + 999, last)))
  end
  at = last + 1
end
return n
