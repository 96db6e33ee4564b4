-- Resolve the wait of a WAITING node (waits.lua), atomically and idempotently.
-- KEYS: 1-16 run, flow and wait keys and the ended-runs stream (see common.lua), 17 the outcome stream.
-- ARGV: mode, run_id, node, wait id, now_ms, payload, message, the payload's signing key id and
-- HMAC (deadline; '' when unsigned: no fields 'k' and 's').
--   answer:   payload = FeedbackResponse bytes; the node runs again with it.
--   child:    the child run the node waits for ended; the node runs again.
--   deadline: the wait's timeout passed. payload = TaskOutcome bytes (FeedbackTimeout) to append
--             to the outcome stream, where it fails the node as any outcome does; '' = keep
--             waiting (only an event records it).
-- Returns {code, node attempt, cycles, run status}:
--   resumed (attempt and cycles {node, cycle, data, answers} to dispatch), failing, kept,
--   answered (the attempt slot holds the stored answer), closed (the node no longer waits on it
--   or the run ended), unknown_run, unknown_wait.
local mode, run_id, node, wait_id, now, payload, message = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local status = redis.call('HGET', KEYS[K_META], 'status')
if not status then return {'unknown_run', '', {}, ''} end
if redis.call('HEXISTS', KEYS[K_WAITS], wait_id) == 0 then return {'unknown_wait', '', {}, status} end
local answer = redis.call('HGET', KEYS[K_WAITS], wait_id .. ':r')
if answer then return {'answered', answer, {}, status} end
if not is_live(status) or current_wait(node) ~= wait_id then
  redis.call('ZREM', KEYS[K_DEADLINES], run_id .. '/' .. wait_id)
  return {'closed', '', {}, status}
end

if mode == 'deadline' then
  redis.call('ZREM', KEYS[K_DEADLINES], run_id .. '/' .. wait_id)
  if payload ~= '' then
    if ARGV[8] == '' then
      redis.call('XADD', KEYS[17], '*', 'o', payload)
    else
      redis.call('XADD', KEYS[17], '*', 'o', payload, 'k', ARGV[8], 's', ARGV[9])
    end
    return {'failing', '', {}, status}
  end
  add_event(now, 'NODE_WAITING', node, redis.call('HGET', KEYS[K_ATTEMPT], node), message, '', '')
  return {'kept', '', {}, status}
end

redis.call('HSET', KEYS[K_META], 'updated', now)
local attempt = resume(run_id, node, wait_id, (mode == 'answer') and payload or '', now, message)
local cyc = {}
note_cycle(cyc, node)
return {'resumed', tostring(attempt), cyc, settle_pause(run_id, now)}
