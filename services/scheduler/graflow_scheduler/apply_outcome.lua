-- Apply one task outcome to a run, atomically and idempotently (fenced by the attempt).
-- KEYS: 1-7 run keys (see common.lua).
-- ARGV: run_id, node, attempt, status ('S' succeeded | 'F' failed), ErrorInfo bytes, worker,
--       now_ms, retry_delay_ms (-1 = no retry), closure json, retention_s, idempotency prefix.
-- The closure (graflow_scheduler.plan.Plan.closure_json) lists the node's successors; group
-- entries carry their policy and their own successors, so the script never needs the graph.
-- Returns {code, ready, retry, run_status}:
--   code: applied | duplicate (attempt already finished) | stale (another attempt) |
--         ignored (run not RUNNING) | unknown_run | unknown_node
--   ready: flat {node, attempt, ...} of task nodes to dispatch (for duplicate/stale: the
--          closure's nodes that are READY now, so a redelivered outcome repeats their dispatch)
--   retry: {} or {node, new_attempt, delay_ms}
local run_id, node = ARGV[1], ARGV[2]
local attempt = tonumber(ARGV[3])
local status, err, worker, now = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local delay = tonumber(ARGV[8])
local retention, idem_prefix = ARGV[10], ARGV[11]

local run_status = redis.call('HGET', KEYS[K_META], 'status')
if not run_status then return {'unknown_run', {}, {}, ''} end
if run_status ~= 'RUNNING' then return {'ignored', {}, {}, run_status} end
local state = redis.call('HGET', KEYS[K_STATE], node)
if not state then return {'unknown_node', {}, {}, run_status} end
local current = tonumber(redis.call('HGET', KEYS[K_ATTEMPT], node) or '0')
local closure = cjson.decode(ARGV[9])

local function ready_in(entries, out)
  for _, e in ipairs(entries) do
    if e.k == 't' then
      if redis.call('HGET', KEYS[K_STATE], e.i) == 'READY' then
        out[#out + 1] = e.i
        out[#out + 1] = redis.call('HGET', KEYS[K_ATTEMPT], e.i) or '1'
      end
    elseif e.s then
      ready_in(e.s, out)
    end
  end
  return out
end

if state ~= 'READY' or attempt ~= current then
  local code = (attempt == current) and 'duplicate' or 'stale'
  local retry = {}
  -- The failure of the previous attempt was applied as a retry: repeat the retry's dispatch.
  if status == 'F' and delay >= 0 and state == 'READY' and current == attempt + 1 then
    retry = {node, tostring(current), tostring(delay)}
  end
  return {code, ready_in(closure, {}), retry, run_status}
end

redis.call('HSET', KEYS[K_META], 'updated', now)

local function count(field)
  return tonumber(redis.call('HGET', KEYS[K_JOIN], field) or '0')
end

local function finish_node(id, new_state)
  redis.call('HSET', KEYS[K_STATE], id, new_state)
  redis.call('HINCRBY', KEYS[K_META], 'pending', -1)
end

if status == 'F' and delay >= 0 then
  local next_attempt = attempt + 1
  redis.call('HSET', KEYS[K_ATTEMPT], node, next_attempt)
  redis.call('HSET', KEYS[K_ERRORS], node, err)
  add_event(now, 'NODE_RETRYING', node, next_attempt,
    string.format('attempt %d failed; attempt %d starts in %d ms', attempt, next_attempt, delay), worker, err)
  return {'applied', {}, {node, tostring(next_attempt), tostring(delay)}, 'RUNNING'}
end

if status == 'S' then
  finish_node(node, 'SUCCEEDED')
  add_event(now, 'NODE_SUCCEEDED', node, attempt, '', worker, '')
else
  finish_node(node, 'FAILED')
  redis.call('HSET', KEYS[K_ERRORS], node, err)
  add_event(now, 'NODE_FAILED', node, attempt, '', worker, err)
end

local function decide(e, ok, fail, cfail)
  if e.pol == 'strict' then
    if fail > 0 then return 'F' end
    if ok >= e.p then return 'S' end
  elseif e.pol == 'best_effort' then
    if ok + fail >= e.p then return 'S' end
  elseif e.pol == 'at_least_n' then
    if ok >= e.n then return 'S' end
    if e.p - fail < e.n then return 'F' end
  elseif e.pol == 'critical' then
    if cfail > 0 then return 'F' end
    if ok + fail >= e.p then return 'S' end
  end
  return nil
end

local function policy_text(e)
  if e.pol == 'at_least_n' then return 'at_least_n ' .. e.n end
  return e.pol
end

local function group_error(e, ok, fail, trigger)
  local why = (e.pol == 'critical') and 'a critical member failed' or
    string.format('%d of %d members failed, %d succeeded', fail, e.p, ok)
  local msg = string.format("group '%s' failed (policy %s): %s", e.i, policy_text(e), why)
  if e.m then
    local states = redis.call('HMGET', KEYS[K_STATE], unpack(e.m))
    local failed, succeeded = {}, {}
    for j, member in ipairs(e.m) do
      if states[j] == 'FAILED' then failed[#failed + 1] = member end
      if states[j] == 'SUCCEEDED' then succeeded[#succeeded + 1] = member end
    end
    msg = msg .. '; failed members: ' .. table.concat(failed, ', ') ..
      '; succeeded members: ' .. ((#succeeded > 0) and table.concat(succeeded, ', ') or '(none)')
  else
    msg = msg .. "; last failed member: '" .. trigger .. "'"
  end
  return error_info('GroupFailed', msg)
end

local ready = {}
local ended = nil -- {failed_node, ErrorInfo bytes} once the run fails
local work = {{closure, status == 'S', node}}
local head = 1
while head <= #work and not ended do
  local list, ok, src = work[head][1], work[head][2], work[head][3]
  head = head + 1
  if not ok then
    -- A failure no group absorbs fails the run: a failed sink, or a failed task upstream of a task.
    if #list == 0 then ended = {src, err} end
    for _, e in ipairs(list) do
      if e.k == 't' then
        redis.call('HINCRBY', KEYS[K_JOIN], e.i .. ':fail', 1)
        ended = {src, err}
        break
      end
    end
  end
  for _, e in ipairs(list) do
    if ended then break end
    if e.k == 't' then
      local c = redis.call('HINCRBY', KEYS[K_JOIN], e.i .. ':ok', 1)
      if c >= e.p and redis.call('HGET', KEYS[K_STATE], e.i) == 'PENDING' then
        redis.call('HSET', KEYS[K_STATE], e.i, 'READY')
        redis.call('HSET', KEYS[K_ATTEMPT], e.i, 1)
        add_event(now, 'NODE_READY', e.i, 1, '', '', '')
        ready[#ready + 1] = e.i
        ready[#ready + 1] = '1'
      end
    else
      local ok_n, fail_n, cfail_n
      if ok then
        ok_n = redis.call('HINCRBY', KEYS[K_JOIN], e.i .. ':ok', 1)
        fail_n = count(e.i .. ':fail')
      else
        fail_n = redis.call('HINCRBY', KEYS[K_JOIN], e.i .. ':fail', 1)
        ok_n = count(e.i .. ':ok')
      end
      if not ok and e.c == 1 then
        cfail_n = redis.call('HINCRBY', KEYS[K_JOIN], e.i .. ':cfail', 1)
      else
        cfail_n = count(e.i .. ':cfail')
      end
      -- A group decides once; members finishing afterwards only update its counters.
      if redis.call('HGET', KEYS[K_STATE], e.i) == 'PENDING' then
        local decision = decide(e, ok_n, fail_n, cfail_n)
        if decision == 'S' then
          finish_node(e.i, 'SUCCEEDED')
          add_event(now, 'NODE_SUCCEEDED', e.i, 0,
            string.format('policy %s: %d of %d members succeeded, %d failed', policy_text(e), ok_n, e.p, fail_n), '', '')
          work[#work + 1] = {e.s, true, e.i}
        elseif decision == 'F' then
          finish_node(e.i, 'FAILED')
          local gerr = group_error(e, ok_n, fail_n, src)
          redis.call('HSET', KEYS[K_ERRORS], e.i, gerr)
          add_event(now, 'NODE_FAILED', e.i, 0, '', '', gerr)
          ended = {e.i, gerr}
        end
      end
    end
  end
end

if ended then
  finish_run(run_id, 'FAILED', now, retention, idem_prefix, {'failed_node', ended[1], 'error', ended[2]},
    ended[1], "node '" .. ended[1] .. "' failed", ended[2])
  return {'applied', {}, {}, 'FAILED'}
end
if tonumber(redis.call('HGET', KEYS[K_META], 'pending')) <= 0 then
  finish_run(run_id, 'SUCCEEDED', now, retention, idem_prefix, {}, '', '', '')
  return {'applied', ready, {}, 'SUCCEEDED'}
end
return {'applied', ready, {}, 'RUNNING'}
