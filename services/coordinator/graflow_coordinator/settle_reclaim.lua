-- Settle claimed entries of a lost consumer (graflow_coordinator.reclaim): the outcome and the
-- dead letter of an entry are appended only if this XACK removed it from the pending list.
-- KEYS[1] = queue stream, KEYS[2] = dead-letter stream, KEYS[3] = outcome stream. ARGV[1] = group,
-- ARGV[2] = dead-letter maxlen; then triples: entry id, TaskOutcome bytes or '', DeadLetter bytes
-- or ''. Returns {lost, poisoned, undecodable, already_acknowledged}.
local lost, poisoned, undecodable, skipped = 0, 0, 0, 0
for i = 3, #ARGV, 3 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    local outcome, letter = ARGV[i + 1], ARGV[i + 2]
    if letter ~= '' then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'd', letter)
    end
    if outcome ~= '' then
      redis.call('XADD', KEYS[3], '*', 'o', outcome)
    end
    if outcome == '' then
      undecodable = undecodable + 1
    elseif letter == '' then
      lost = lost + 1
    else
      poisoned = poisoned + 1
    end
  else
    skipped = skipped + 1
  end
end
return {lost, poisoned, undecodable, skipped}
