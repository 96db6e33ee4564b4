-- Apply one task outcome to a run, atomically and idempotently (fenced by the attempt).
-- KEYS: 1-7 run keys (see common.lua), 8-15 flow and wait keys (see flow.lua, waits.lua), 16 the
--       ended-runs stream, 17 the run's result hash gf:res:{R} and 18 its attempts hash (the
--       result-store's layout, graflow_runtime.keys), and for a 'W' outcome waiting for a child
--       run, 19 the child run's meta (a child run is in its parent's cell: every key is of the
--       run's cell); for a 'W' outcome with a feedback request, 19 the cell's feedback-opened
--       stream when the scheduler notifies a webhook (absent: no notification).
-- ARGV: run_id, node, attempt, status ('S' succeeded | 'F' failed | 'W' waiting), ErrorInfo bytes, worker,
--       now_ms, retry_delay_ms (-1 = no retry), closure json, retention_s, idempotency prefix,
--       worker lost ('1': the coordinator reported the attempt lost with its worker; it is retried
--       now without consuming the retry budget and counted in the join hash as '<node>:lost'),
--       flow json (graflow_scheduler.graph.directives: directives, continuation, loop edges, limits; see flow.lua),
--       'S': the result carried inline in the outcome (NodeResult bytes, '' = none: it was stored
--       by PutResults, or there is none), wait id ('W': what it waits on; 'F': the wait a
--       FeedbackTimeout ends, else ''), and for 'W': wait record, '1' for a feedback request,
--       deadline ms (0 = none).
-- An inline result is stored only when the outcome is applied (a stale, duplicate or ignored
-- outcome writes nothing), before anything it releases is dispatched and before the run's end,
-- with the result-store's rule (put_results.lua): written only when no later attempt of the node
-- stored one, the first value of an attempt kept, both hashes expiring retention_s after the write.
-- A 'W' outcome parks the node (waits.lua); a wait id used before in the run fails the node with
-- InvalidWait instead; a child run that ended already resumes it at once. While a node waits,
-- only an 'F' outcome of its current attempt naming the wait it waits on applies (the wait
-- timer's FeedbackTimeout), never as a retry.
-- The closure (graflow_scheduler.graph.plan.Plan.closure_json) lists the node's successors; group
-- entries carry their policy and their own successors, so the script never needs the graph.
-- Returns {code, ready, retry, run_status}:
--   code: applied | duplicate (attempt already finished) | stale (another attempt) |
--         ignored (run ended) | unknown_run | unknown_node
--   ready: flat {node, attempt, ...} of task nodes to dispatch (for duplicate/stale: the
--          closure's nodes that are READY now, so a redelivered outcome repeats their dispatch)
--   retry: {} or {node, new_attempt, delay_ms, lost attempts of the node}
--   5th (applied, duplicate, stale): {cycles, added}: cycles flat {node, cycle, iteration data
--          json, feedback answers} of dispatched nodes on a re-run, with data or answers; added flat {directive index (0-based),
--          node id} of the nodes added by next_task directives
local run_id, node = ARGV[1], ARGV[2]
local attempt = tonumber(ARGV[3])
local status, err, worker, now = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local delay = tonumber(ARGV[8])
local retention, idem_prefix = ARGV[10], ARGV[11]
local worker_lost = ARGV[12] == '1'
local flow = decode_flow(ARGV[13], node)

-- The meta fields this outcome's own transition updates, read once (written back in one HSET).
local meta = redis.call('HMGET', KEYS[K_META], 'status', 'pending', 'ready')
local run_status = meta[1]
if not run_status then return {'unknown_run', {}, {}, ''} end
if not is_live(run_status) then return {'ignored', {}, {}, run_status} end
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

local wait_id = ARGV[15] or ''
local live = state == 'READY' or
  (state == 'WAITING' and status == 'F' and wait_id ~= '' and redis.call('HGET', KEYS[K_WAITS], '@' .. node) == wait_id)
if not live or attempt ~= current then
  local code = (attempt == current) and 'duplicate' or 'stale'
  local retry = {}
  -- The failure of the previous attempt was applied as a retry: repeat the retry's dispatch.
  if status == 'F' and delay >= 0 and state == 'READY' and current == attempt + 1 then
    retry = {node, tostring(current), tostring(delay), redis.call('HGET', KEYS[K_JOIN], node .. ':lost') or '0'}
  end
  local again, cyc = ready_in(closure, {}), {}
  for i = 1, #again, 2 do
    if tonumber(again[i + 1]) > 1 then note_cycle(cyc, again[i]) end
  end
  replay_released(node, attempt, again, cyc)
  if #retry > 0 then note_cycle(cyc, node) end
  -- The wait was resolved already (the node READY as the next attempt): repeat its dispatch.
  if status == 'W' and state == 'READY' and current == attempt + 1 then
    push_ready(again, node, current)
    note_cycle(cyc, node)
  end
  return {code, again, retry, run_status, {cyc, {}}}
end

if state == 'WAITING' then
  close_wait(run_id, node)
  delay = -1
end

if status == 'W' then
  local record, feedback, deadline = ARGV[16], ARGV[17] == '1', tonumber(ARGV[18])
  if redis.call('HEXISTS', KEYS[K_WAITS], wait_id) == 1 then
    status, delay = 'F', -1
    err = error_info('InvalidWait', string.format("'%s' waits on '%s', which this run waited on before " ..
      '(a feedback request id, or a child run); give each feedback request of a run its own id', node, wait_id))
  else
    redis.call('HSET', KEYS[K_META], 'updated', now)
    local what = feedback and ("feedback '" .. wait_id .. "'") or ('child run ' .. string.sub(record, 7))
    park(run_id, node, attempt, wait_id, record, feedback, deadline, now, 'waiting for ' .. what, worker)
    -- Notified iff recorded: the entry is appended with the request, in this script.
    if feedback and KEYS[19] then
      redis.call('XADD', KEYS[19], 'MAXLEN', '~', FEEDBACK_OPENED_MAXLEN, '*', 'r', run_id, 'q', wait_id)
    end
    local ready, cyc = {}, {}
    if not feedback then
      local child_status = redis.call('HGET', KEYS[19], 'status')
      if child_status and not is_live(child_status) then
        push_ready(ready, node, resume(run_id, node, wait_id, '', now, what .. ' ended ' .. child_status))
        note_cycle(cyc, node)
      end
    end
    return {'applied', ready, {}, settle_pause(run_id, now), {cyc, {}}}
  end
end

local function count(field)
  return tonumber(redis.call('HGET', KEYS[K_JOIN], field) or '0')
end

local function finish_node(id, new_state)
  set_state(id, new_state)
  redis.call('HINCRBY', KEYS[K_META], 'pending', -1)
end

if status == 'F' and delay >= 0 then
  redis.call('HSET', KEYS[K_META], 'updated', now)
  local next_attempt = attempt + 1
  redis.call('HSET', KEYS[K_ATTEMPT], node, next_attempt)
  redis.call('HSET', KEYS[K_ERRORS], node, err)
  local lost, message
  if worker_lost then
    lost = redis.call('HINCRBY', KEYS[K_JOIN], node .. ':lost', 1)
    message = string.format('attempt %d was lost with its worker; attempt %d starts now (lost %d times)',
      attempt, next_attempt, lost)
  else
    lost = count(node .. ':lost')
    message = string.format('attempt %d failed; attempt %d starts in %d ms', attempt, next_attempt, delay)
  end
  add_event(now, 'NODE_RETRYING', node, next_attempt, message, worker, err)
  local cyc = {}
  note_cycle(cyc, node)
  return {'applied', {}, {node, tostring(next_attempt), tostring(delay), tostring(lost)}, settle_pause(run_id, now), {cyc, {}}}
end

-- A success's inline result, stored as the result-store's put_results.lua does (highest attempt
-- wins), before the directives and the successors: whatever this outcome releases or ends reads it.
local result = ARGV[14]
if status == 'S' and result and result ~= '' then
  local stored = tonumber(redis.call('HGET', KEYS[18], node) or '0')
  if stored < attempt then
    redis.call('HSET', KEYS[17], node, result)
    redis.call('HSET', KEYS[18], node, attempt)
    redis.call('EXPIRE', KEYS[17], retention)
    redis.call('EXPIRE', KEYS[18], retention)
  end
end

-- The node finishes: its state, then in one write 'updated' and the counters finish_node and
-- set_state would change, from the values read at the start (nothing has changed them since).
redis.call('HSET', KEYS[K_STATE], node, (status == 'S') and 'SUCCEEDED' or 'FAILED')
local counters = {'updated', now, 'pending', tonumber(meta[2] or '0') - 1}
if state == 'READY' then
  counters[5], counters[6] = 'ready', tonumber(meta[3] or '0') - 1
end
redis.call('HSET', KEYS[K_META], unpack(counters))
if status == 'S' then
  add_event(now, 'NODE_SUCCEEDED', node, attempt, '', worker, '')
else
  redis.call('HSET', KEYS[K_ERRORS], node, err)
  add_event(now, 'NODE_FAILED', node, attempt, '', worker, err)
end

-- Dynamic control flow (flow.lua): the directives of a success, then whether the successors of
-- the continuation (the node itself, or for a node added at run time the node it continues) are
-- released now.
local ready, cyc, added_ids, released = {}, {}, {}, {}
local propagate, added, dir_err = true, 0, nil
if status == 'S' and #flow.dir > 0 then
  local r = apply_directives(node, flow, closure, now, ready, cyc, added_ids, released)
  if r.stop == 'CANCELED' then
    finish_run(run_id, 'CANCELED', now, retention, idem_prefix, {'message', r.message}, node, r.message, '')
    return {'applied', {}, {}, 'CANCELED', {{}, {}}}
  elseif r.stop == 'TERMINATED' then
    skip_leftovers()
    finish_run(run_id, 'SUCCEEDED', now, retention, idem_prefix, {'message', r.message}, node, r.message, '')
    return {'applied', {}, {}, 'SUCCEEDED', {{}, {}}}
  end
  dir_err, added = r.err, r.added
  if r.jump or r.iterate then propagate = false end
end
if status == 'S' and propagate then
  if flow.d == 1 then
    -- One of the runs its continuation's successors wait for; the last one releases them.
    if flow.c == '' then
      propagate = false
    else
      local left = redis.call('HINCRBY', KEYS[K_JOIN], flow.c .. ':defer', added - 1)
      if left > 0 or redis.call('HEXISTS', KEYS[K_JOIN], flow.c .. ':dfail') == 1 then propagate = false end
    end
  elseif added > 0 then
    redis.call('HINCRBY', KEYS[K_JOIN], node .. ':defer', added)
    propagate = false
  end
elseif status == 'F' and flow.d == 1 and flow.c ~= '' then
  -- The first failure among them fails the continuation, once.
  if redis.call('HSETNX', KEYS[K_JOIN], flow.c .. ':dfail', 1) == 0 then propagate = false end
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

local ended = dir_err -- {failed_node, ErrorInfo bytes[, mark it FAILED]} once the run fails
local work = {}
if propagate and not ended then work[1] = {closure, status == 'S', node, flow.c} end
local head, released_n = 1, 0
while head <= #work and not ended do
  local list, ok, src = work[head][1], work[head][2], work[head][3]
  local mark = work[head][4] or src -- the predecessor a join counts (see join_add)
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
      if join_add(e, ':ok', mark) >= e.p and release(e.i, now, ready, cyc) then
        released_n = released_n + 1
      end
    else
      local ok_n, fail_n, cfail_n, fresh, other
      if ok then
        ok_n, fresh = join_add(e, ':ok', mark)
        other = redis.call('HMGET', KEYS[K_JOIN], e.i .. ':fail', e.i .. ':cfail')
        fail_n, cfail_n = tonumber(other[1] or '0'), tonumber(other[2] or '0')
      else
        fail_n, fresh = join_add(e, ':fail', mark)
        if fresh and e.c == 1 then
          ok_n = count(e.i .. ':ok')
          cfail_n = redis.call('HINCRBY', KEYS[K_JOIN], e.i .. ':cfail', 1)
        else
          other = redis.call('HMGET', KEYS[K_JOIN], e.i .. ':ok', e.i .. ':cfail')
          ok_n, cfail_n = tonumber(other[1] or '0'), tonumber(other[2] or '0')
        end
      end
      local group_state = redis.call('HGET', KEYS[K_STATE], e.i)
      if group_state == 'SKIPPED' then -- skipped by a jump, reached again by a later run
        set_state(e.i, 'PENDING', 'SKIPPED')
        redis.call('HINCRBY', KEYS[K_META], 'pending', 1)
        group_state = 'PENDING'
      end
      -- A group decides once; members finishing afterwards only update its counters.
      if group_state == 'PENDING' then
        local decision = decide(e, ok_n, fail_n, cfail_n)
        if decision == 'S' then
          finish_node(e.i, 'SUCCEEDED')
          add_event(now, 'NODE_SUCCEEDED', e.i, 0,
            string.format('policy %s: %d of %d members succeeded, %d failed', policy_text(e), ok_n, e.p, fail_n), '', '')
          work[#work + 1] = {e.s, true, e.i, e.i}
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

-- The task nodes released above are READY now: meta 'ready' counts them, in one write.
if released_n > 0 then redis.call('HINCRBY', KEYS[K_META], 'ready', released_n) end
if not ended and status == 'S' and propagate then
  ended = fire_loops(flow.c, flow, now, ready, cyc, released)
end
if not ended then ended = count_steps(#ready / 2, flow.ms, node) end
if ended and ended[3] then fail_node_with(ended[1], ended[2], now) end
record_released(node, attempt, released)

if ended then
  finish_run(run_id, 'FAILED', now, retention, idem_prefix, {'failed_node', ended[1], 'error', ended[2]},
    ended[1], "node '" .. ended[1] .. "' failed", ended[2])
  return {'applied', {}, {}, 'FAILED', {{}, added_ids}}
end
-- What is left of the run, in one read.
local after = redis.call('HMGET', KEYS[K_META], 'pending', 'flow', 'status', 'waiting', 'ready')
if tonumber(after[1]) <= 0 then
  finish_run(run_id, 'SUCCEEDED', now, retention, idem_prefix, {}, '', '', '')
  return {'applied', ready, {}, 'SUCCEEDED', {cyc, added_ids}}
end
-- After a jump, nodes may wait for nodes that will never run: once nothing is READY, they are
-- skipped and the run ends.
if #ready == 0 and after[2] == '1' and run_is_idle() then
  skip_leftovers()
  finish_run(run_id, 'SUCCEEDED', now, retention, idem_prefix, {}, '', 'nothing left can run: the nodes ' ..
    'still waiting depended on nodes a jump skipped', '')
  return {'applied', {}, {}, 'SUCCEEDED', {{}, added_ids}}
end
return {'applied', ready, {}, settle_pause(run_id, now, {after[3], after[4], after[5]}), {cyc, added_ids}}
