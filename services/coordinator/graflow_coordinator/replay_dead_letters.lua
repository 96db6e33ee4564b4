-- Replay dead letters (graflow_coordinator.deadletters): each is appended to its queue's lane
-- only if this call's XDEL removed it, with the signature it had.
-- KEYS[1] = dead-letter stream, KEYS[1 + i] = the queue stream (lane) of dead letter i.
-- ARGV: per dead letter 4 values: its id, raw envelope bytes, the envelope's signing key id and
-- HMAC ('' when it has none: no fields 'k' and 's'). Returns how many were replayed by this call.
local replayed = 0
for i = 1, #ARGV / 4 do
  local b = 4 * (i - 1)
  if redis.call('XDEL', KEYS[1], ARGV[b + 1]) == 1 then
    if ARGV[b + 3] == '' then
      redis.call('XADD', KEYS[1 + i], '*', 'e', ARGV[b + 2])
    else
      redis.call('XADD', KEYS[1 + i], '*', 'e', ARGV[b + 2], 'k', ARGV[b + 3], 's', ARGV[b + 4])
    end
    replayed = replayed + 1
  end
end
return replayed
