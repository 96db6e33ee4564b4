-- Replay dead letters (graflow_coordinator.deadletters): each is appended to its queue only if
-- this call's XDEL removed it.
-- KEYS[1] = dead-letter stream. ARGV[1] = queue stream key prefix; then triples: dead letter id,
-- queue, raw envelope bytes. Returns how many were replayed by this call.
local replayed = 0
for i = 2, #ARGV, 3 do
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('XADD', ARGV[1] .. ARGV[i + 1], '*', 'e', ARGV[i + 2])
    replayed = replayed + 1
  end
end
return replayed
