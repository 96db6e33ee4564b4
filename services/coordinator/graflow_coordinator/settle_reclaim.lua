-- Settle claimed entries of a lost consumer (graflow_coordinator.reclaim): the outcome and the
-- dead letter of an entry are appended only if this XACK removed it from the pending list.
-- KEYS[1] = queue stream, KEYS[2] = dead-letter stream, KEYS[3] = outcome stream. ARGV[1] = group,
-- ARGV[2] = dead-letter maxlen; then per entry 7 values: entry id, TaskOutcome bytes or '', the
-- outcome's signing key id and HMAC ('' when unsigned), DeadLetter bytes or '', the envelope's key
-- id and HMAC as the entry carried them ('' when it had none; kept beside the dead letter so that a
-- replay can check them). Returns {lost, poisoned, undecodable or badly signed, already_acknowledged}.
local lost, poisoned, undecodable, skipped = 0, 0, 0, 0
for i = 3, #ARGV, 7 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    local outcome, letter = ARGV[i + 1], ARGV[i + 4]
    if letter ~= '' then
      if ARGV[i + 5] == '' then
        redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'd', letter)
      else
        redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'd', letter, 'k', ARGV[i + 5], 's', ARGV[i + 6])
      end
    end
    if outcome ~= '' then
      if ARGV[i + 2] == '' then
        redis.call('XADD', KEYS[3], '*', 'o', outcome)
      else
        redis.call('XADD', KEYS[3], '*', 'o', outcome, 'k', ARGV[i + 2], 's', ARGV[i + 3])
      end
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
