-- Replay dead letters (graflow_coordinator.deadletters): each is appended to its queue's lane
-- only if this call's XDEL removed it.
-- KEYS[1] = dead-letter stream, KEYS[1 + i] = the queue stream (lane) of dead letter i.
-- ARGV: pairs of dead letter id, raw envelope bytes. Returns how many were replayed by this call.
local replayed = 0
for i = 1, #ARGV / 2 do
  if redis.call('XDEL', KEYS[1], ARGV[2 * i - 1]) == 1 then
    redis.call('XADD', KEYS[1 + i], '*', 'e', ARGV[2 * i])
    replayed = replayed + 1
  end
end
return replayed
