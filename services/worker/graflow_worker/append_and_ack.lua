-- Append the outcomes of a commit batch and acknowledge their deliveries, atomically
-- (graflow_worker.committer).
-- KEYS[1] = the outcome stream, KEYS[2..] = queue streams, all of one cell (one slot).
-- ARGV[1] = outcome field, ARGV[2] = consumer group, ARGV[3] = number of outcomes n,
-- ARGV[4..3n+3] = per outcome: TaskOutcome bytes, signing key id and HMAC ('' when unsigned: no
-- fields 'k' and 's'), then per queue stream (in KEYS order): its number of entry ids, the ids.
-- The first write fails on OOM before anything is written, so the script is all or nothing.
local field, group, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 4, 3 * n + 3, 3 do
  if ARGV[i + 1] == '' then
    redis.call('XADD', KEYS[1], '*', field, ARGV[i])
  else
    redis.call('XADD', KEYS[1], '*', field, ARGV[i], 'k', ARGV[i + 1], 's', ARGV[i + 2])
  end
end
local at = 3 * n + 4
for k = 2, #KEYS do
  local last = at + tonumber(ARGV[at])
  for first = at + 1, last, 1000 do  -- unpack() is bounded by the Lua stack
    redis.call('XACK', KEYS[k], group, unpack(ARGV, first, math.min(first + 999, last)))
  end
  at = last + 1
end
return n
