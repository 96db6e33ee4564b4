-- Waits (human feedback, child runs), used by apply_outcome and resolve_wait (graflow_scheduler.state.
-- scripts prepends common.lua, flow.lua and this file). A node that waits is WAITING: it holds no
-- worker and no delivery; it runs again (READY, attempt+1, same cycle) when the wait is resolved.
--
-- KEYS[K_WAITS]     '<wait id>' -> what the node waits for (FeedbackRequest bytes, or for a child
--                   run 'child:<child run id>'); '<wait id>:r' -> FeedbackResponse bytes once
--                   answered; '@<node>' -> the wait id the node waits on now (absent: not waiting).
-- KEYS[K_FEEDBACK]  zset of the run's cell, '<run>/<request id>' -> created ms: feedback requests
--                   awaiting an answer (the listing of pending requests).
-- KEYS[K_DEADLINES] zset of the run's cell, '<run>/<wait id>' -> deadline ms (the wait timer).
-- KEYS[19] (apply_outcome, a feedback request, when a webhook is notified): stream of the cell's
--                   new requests, {r run id, q request id}, read by graflow_scheduler.notify.
-- Meta field 'waiting' counts the run's WAITING nodes; the run is PAUSED while it has some and
-- nothing is READY (see settle_pause).

-- The feedback-opened stream keeps about this many entries (XADD MAXLEN ~): far more than a
-- notifier leaves undelivered unless its webhook is down for a long time (docs/operations.md).
local FEEDBACK_OPENED_MAXLEN = 10000

-- Parks `node` (READY at `attempt`) on a wait. `record` is stored under the wait id; `feedback`
-- true lists it among the pending requests; `deadline` > 0 arms the wait timer.
local function park(run_id, node, attempt, wait_id, record, feedback, deadline, now, message, worker)
  set_state(node, 'WAITING', 'READY')
  redis.call('HSET', KEYS[K_WAITS], wait_id, record, '@' .. node, wait_id)
  redis.call('HINCRBY', KEYS[K_META], 'waiting', 1)
  if feedback then redis.call('ZADD', KEYS[K_FEEDBACK], now, run_id .. '/' .. wait_id) end
  if deadline > 0 then redis.call('ZADD', KEYS[K_DEADLINES], deadline, run_id .. '/' .. wait_id) end
  add_event(now, 'NODE_WAITING', node, attempt, message, worker, '')
end

-- The wait id `node` waits on, or nil when it does not wait.
local function current_wait(node)
  if redis.call('HGET', KEYS[K_STATE], node) ~= 'WAITING' then return nil end
  return redis.call('HGET', KEYS[K_WAITS], '@' .. node)
end

-- Ends the node's wait (answered, timed out or failed): out of the indexes and the count.
local function close_wait(run_id, node)
  local wait_id = redis.call('HGET', KEYS[K_WAITS], '@' .. node)
  if not wait_id then return end
  redis.call('HDEL', KEYS[K_WAITS], '@' .. node)
  redis.call('ZREM', KEYS[K_FEEDBACK], run_id .. '/' .. wait_id)
  redis.call('ZREM', KEYS[K_DEADLINES], run_id .. '/' .. wait_id)
  redis.call('HINCRBY', KEYS[K_META], 'waiting', -1)
end

-- Resolves the wait of WAITING `node`: stores the answer (FeedbackResponse bytes, '' for a child
-- run), and makes the node READY as attempt+1 in its cycle. The waiting attempt does not count
-- against the retry budget. Returns the new attempt.
local function resume(run_id, node, wait_id, answer, now, message)
  close_wait(run_id, node)
  if answer ~= '' then
    redis.call('HSET', KEYS[K_WAITS], wait_id .. ':r', answer)
    -- A FeedbackResponses message with this one answer (field 1); serialized messages concatenate.
    local answers = redis.call('HGET', KEYS[K_CYCLE], node .. ':fb') or ''
    redis.call('HSET', KEYS[K_CYCLE], node .. ':fb', answers .. pb_string(1, answer))
  end
  set_state(node, 'READY', 'WAITING')
  local a = redis.call('HINCRBY', KEYS[K_ATTEMPT], node, 1)
  redis.call('HINCRBY', KEYS[K_JOIN], node .. ':rbase', 1)
  add_event(now, 'NODE_READY', node, a, message, '', '')
  return a
end

-- PAUSED while the run has WAITING nodes and none READY; RUNNING otherwise. Returns the status.
-- `m`: the meta fields {status, waiting, ready} when the caller has just read them.
local function settle_pause(run_id, now, m)
  m = m or redis.call('HMGET', KEYS[K_META], 'status', 'waiting', 'ready')
  local status = m[1]
  if not is_live(status) then return status end
  local idle = tonumber(m[2] or '0') > 0 and tonumber(m[3] or '0') <= 0
  if idle and status == 'RUNNING' then
    status = 'PAUSED'
    add_event(now, 'RUN_PAUSED', '', 0, 'every node that can run waits for feedback or a child run', '', '')
  elseif not idle and status == 'PAUSED' then
    status = 'RUNNING'
    add_event(now, 'RUN_RESUMED', '', 0, '', '', '')
  else
    return status
  end
  move_status(run_id, m[1], status, redis.call('HGET', KEYS[K_META], 'created') or now)
  redis.call('HSET', KEYS[K_META], 'status', status, 'updated', now)
  return status
end
