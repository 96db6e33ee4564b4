-- Dynamic control flow, used by apply_outcome (graflow_scheduler.state.scripts prepends common.lua and
-- this file): task directives (next_task, goto, next_iteration, terminate, cancel), loop edges,
-- re-runs and cycle limits, the step limit, and ending a run whose remaining nodes can't run.
--
-- KEYS[K_DYN]   node -> dynamic node spec JSON (opaque here); '#n:<base>' id counters;
--               '#mc:<node>' max cycles of dynamic nodes; '#r:<node>:<attempt>' JSON list of the
--               nodes that applying that outcome released (repeated when it is delivered again).
-- KEYS[K_CYCLE] node -> current cycle (absent = 0); '<node>:data' JSON data of next_iteration;
--               '<node>:fb' answers to the node's feedback requests in this cycle (waits.lua).
-- Join hash fields used here: '<node>:defer' (runs the node's successors still wait for: nodes it
-- added), '<node>:dfail' (one of them failed), '<succ><<pred>' (pred already counted in succ's
-- join), '<node>:rbase' (attempts of earlier cycles that do not count against the retry budget).
--
-- The flow argument (graflow_scheduler.graph.directives, graph/plan.py): c continuation node whose successors this outcome
-- releases ('' none; absent = the node itself), d 1 for a node added at run time, ms max steps,
-- mc the node's max cycles, lp loop edges of the continuation {h head, mc head's max cycles,
-- b nodes reset, x join fields cleared}, dir directives {k add|goto|iter|term|cancel, ...}.

local function decode_flow(raw, node)
  local f = (raw and raw ~= '') and cjson.decode(raw) or {}
  if f.c == nil then f.c = node end
  f.d = tonumber(f.d or 0)
  f.ms = tonumber(f.ms or 0)
  f.mc = tonumber(f.mc or 100)
  f.lp = f.lp or {}
  f.dir = f.dir or {}
  return f
end

local function push_ready(ready, id, attempt)
  ready[#ready + 1] = id
  ready[#ready + 1] = tostring(attempt)
end

local function push_cycle(cyc, id, c, data, answers)
  cyc[#cyc + 1] = id
  cyc[#cyc + 1] = tostring(c)
  cyc[#cyc + 1] = data or ''
  cyc[#cyc + 1] = answers or ''
end

-- Appends {node, cycle, data, feedback answers} to `cyc` when the node's current run is a re-run,
-- has iteration data or has answers to its feedback requests.
local function note_cycle(cyc, id)
  local v = redis.call('HMGET', KEYS[K_CYCLE], id, id .. ':data', id .. ':fb')
  if (v[1] and v[1] ~= '0') or v[2] or v[3] then push_cycle(cyc, id, v[1] or '0', v[2], v[3]) end
end

-- A new cycle starting at `attempt`: earlier attempts (except those lost with their worker, which
-- never counted) do not count against the node's retry budget.
local function start_retry_budget(id, attempt)
  local lost = tonumber(redis.call('HGET', KEYS[K_JOIN], id .. ':lost') or '0')
  redis.call('HSET', KEYS[K_JOIN], id .. ':rbase', attempt - 1 - lost)
end

-- Counts finished predecessor `src` into field `suffix` (':ok', ':fail') of join entry `e`.
-- Entries with u = 1 (joins over several predecessors, groups) count each predecessor once, so a
-- node that runs again does not count twice. Returns the count and whether `src` was new.
local function join_add(e, suffix, src)
  if e.u == 1 and redis.call('HSETNX', KEYS[K_JOIN], e.i .. '<' .. src, 1) == 0 then
    return tonumber(redis.call('HGET', KEYS[K_JOIN], e.i .. suffix) or '0'), false
  end
  return redis.call('HINCRBY', KEYS[K_JOIN], e.i .. suffix, 1), true
end

-- Makes task `id` READY when it waits (PENDING, or SKIPPED by a jump while the run goes on). A
-- node that ran before (a loop) starts a new cycle; its attempt counter continues. Returns true
-- when it released it: the caller adds the nodes it released to meta 'ready' (set_state's count)
-- in one write.
local function release(id, now, ready, cyc)
  local st = redis.call('HGET', KEYS[K_STATE], id)
  if st ~= 'PENDING' and st ~= 'SKIPPED' then return false end
  if st == 'SKIPPED' then redis.call('HINCRBY', KEYS[K_META], 'pending', 1) end
  redis.call('HSET', KEYS[K_STATE], id, 'READY')
  local a = redis.call('HINCRBY', KEYS[K_ATTEMPT], id, 1)
  local message = ''
  if a > 1 then
    local c = redis.call('HINCRBY', KEYS[K_CYCLE], id, 1)
    redis.call('HDEL', KEYS[K_CYCLE], id .. ':data', id .. ':fb')
    start_retry_budget(id, a)
    push_cycle(cyc, id, c, '', '')
    message = 'cycle ' .. c
  end
  add_event(now, 'NODE_READY', id, a, message, '', '')
  push_ready(ready, id, a)
  return true
end

-- Runs `target` again as a new cycle (for the first time when it never ran), with iteration
-- `data` (JSON or ''). `mc`: its max cycles (nil: looked up for dynamic nodes, else 100). A
-- target that is READY already is left alone. Returns nil or a run-ending error
-- {node, ErrorInfo, true when that node is to be marked FAILED}.
local function rerun(target, data, mc, why, now, ready, cyc)
  local st = redis.call('HGET', KEYS[K_STATE], target)
  if not st then
    return {target, error_info('InvalidDirective', string.format("'%s' is not a node of this run (%s)", target, why)), false}
  end
  if st == 'READY' or st == 'WAITING' then return nil end
  local a = tonumber(redis.call('HGET', KEYS[K_ATTEMPT], target) or '0')
  local c = tonumber(redis.call('HGET', KEYS[K_CYCLE], target) or '0')
  if a > 0 then c = c + 1 end
  mc = mc or tonumber(redis.call('HGET', KEYS[K_DYN], '#mc:' .. target) or '100')
  if c > mc then
    local e = error_info('CycleLimitExceeded', string.format(
      "node '%s' cannot run again (%s): it ran %d times and its max_cycles is %d; raise max_cycles " ..
      "(@task(max_cycles=...) or workflow(max_cycles=...)) or stop earlier (ctx.can_iterate())", target, why, c, mc))
    return {target, e, true}
  end
  if st ~= 'PENDING' then redis.call('HINCRBY', KEYS[K_META], 'pending', 1) end
  set_state(target, 'READY', st)
  redis.call('HSET', KEYS[K_ATTEMPT], target, a + 1)
  if a > 0 then
    redis.call('HSET', KEYS[K_CYCLE], target, c)
    start_retry_budget(target, a + 1)
  end
  redis.call('HDEL', KEYS[K_CYCLE], target .. ':fb')
  if data and data ~= '' then
    redis.call('HSET', KEYS[K_CYCLE], target .. ':data', data)
  else
    redis.call('HDEL', KEYS[K_CYCLE], target .. ':data')
  end
  add_event(now, 'NODE_READY', target, a + 1, string.format('cycle %d: %s', c, why), '', '')
  push_ready(ready, target, a + 1)
  if c > 0 or (data and data ~= '') then push_cycle(cyc, target, c, data, '') end
  return nil
end

-- A run-ending error found while applying: the node named by it is FAILED with it.
local function fail_node_with(id, e, now)
  local st = redis.call('HGET', KEYS[K_STATE], id)
  if st == 'READY' or st == 'PENDING' then redis.call('HINCRBY', KEYS[K_META], 'pending', -1) end
  set_state(id, 'FAILED', st)
  redis.call('HSET', KEYS[K_ERRORS], id, e)
  add_event(now, 'NODE_FAILED', id, 0, '', '', e)
end

-- Successor entries still waiting for the jumping node become SKIPPED (a later run of the node
-- that releases them normally brings them back).
local function skip_waiting(closure, keep, why, now)
  for _, e in ipairs(closure) do
    if not keep[e.i] and redis.call('HGET', KEYS[K_STATE], e.i) == 'PENDING' then
      set_state(e.i, 'SKIPPED', 'PENDING')
      redis.call('HINCRBY', KEYS[K_META], 'pending', -1)
      add_event(now, 'NODE_SKIPPED', e.i, 0, why, '', '')
    end
  end
end

local function new_node_id(parent)
  local base = parent
  while true do
    local shorter = string.match(base, '^(.+)%.next%.%d+$')
    if not shorter then break end
    base = shorter
  end
  base = string.sub(base, 1, 100)
  while true do
    local id = base .. '.next.' .. redis.call('HINCRBY', KEYS[K_DYN], '#n:' .. base, 1)
    if redis.call('HEXISTS', KEYS[K_STATE], id) == 0 then return id end
  end
end

-- Applies the directives of a successful outcome, in order (cancel, then terminate, win over the
-- others). Returns {stop = 'CANCELED'|'TERMINATED', message} or {jump, iterate, added, err}:
-- `added` counts the nodes the static successors wait for; `err` ends the run (see rerun).
local function apply_directives(node, flow, closure, now, ready, cyc, added_ids, released)
  redis.call('HSET', KEYS[K_META], 'flow', '1')
  for _, d in ipairs(flow.dir) do
    if d.k == 'cancel' then return {stop = 'CANCELED', message = d.m or ''} end
  end
  for _, d in ipairs(flow.dir) do
    if d.k == 'term' then return {stop = 'TERMINATED', message = d.m or ''} end
  end
  local r = {jump = false, iterate = false, added = 0}
  local keep = {}
  for index, d in ipairs(flow.dir) do
    local target = d.t
    if d.k == 'add' then
      if d.i ~= '' and redis.call('HEXISTS', KEYS[K_STATE], d.i) == 1 then
        target = d.i -- an existing node: jump there
      else
        local id = (d.i ~= '') and d.i or new_node_id(node)
        set_state(id, 'READY', false)
        redis.call('HSET', KEYS[K_ATTEMPT], id, 1)
        redis.call('HSET', KEYS[K_DYN], id, d.v, '#mc:' .. id, d.mc)
        redis.call('HINCRBY', KEYS[K_META], 'pending', 1)
        add_event(now, 'NODE_ADDED', id, 0, string.format("task '%s' added by '%s'%s", d.t, node,
          (d.g == 1) and ' (goto: its successors are skipped)' or ''), '', '')
        add_event(now, 'NODE_READY', id, 1, '', '', '')
        push_ready(ready, id, 1)
        released[#released + 1] = id
        added_ids[#added_ids + 1] = tostring(index - 1)
        added_ids[#added_ids + 1] = id
        if d.g == 1 then
          r.jump = true
          keep[id] = true
        else
          r.added = r.added + 1
        end
        target = nil
      end
    end
    local e = nil
    if target and redis.call('HEXISTS', KEYS[K_STATE], target) == 0 then
      e = {node, error_info('InvalidDirective', string.format(
        "'%s' called goto('%s'), which is not a node of this run; name a node of the workflow or one added by next_task",
        node, target)), true}
    elseif target then -- goto
      e = rerun(target, '', tonumber(d.mc), "goto from '" .. node .. "'", now, ready, cyc)
      r.jump = true
      keep[target] = true
      released[#released + 1] = target
    elseif d.k == 'iter' then
      e = rerun(node, d.d or '', flow.mc, 'next_iteration', now, ready, cyc)
      r.iterate = true
      released[#released + 1] = node
    end
    if e then
      r.err = e
      return r
    end
  end
  if r.jump then skip_waiting(closure, keep, "'" .. node .. "' jumped elsewhere", now) end
  return r
end

-- Fires the loop edges of the continuation: resets each loop's nodes and runs its head again.
local function fire_loops(tail, flow, now, ready, cyc, released)
  for _, l in ipairs(flow.lp) do
    redis.call('HSET', KEYS[K_META], 'flow', '1')
    for _, b in ipairs(l.b) do
      local s = redis.call('HGET', KEYS[K_STATE], b)
      if s == 'SUCCEEDED' or s == 'FAILED' or s == 'SKIPPED' then
        set_state(b, 'PENDING', s)
        redis.call('HINCRBY', KEYS[K_META], 'pending', 1)
      end
    end
    for i = 1, #l.x, CHUNK_PAIRS do
      redis.call('HDEL', KEYS[K_JOIN], unpack(l.x, i, math.min(i + CHUNK_PAIRS - 1, #l.x)))
    end
    local e = rerun(l.h, '', tonumber(l.mc), "loop edge from '" .. tail .. "'", now, ready, cyc)
    if e then return e end
    released[#released + 1] = l.h
  end
  return nil
end

-- Steps: node runs started after the roots. Returns a run-ending error when over max_steps.
local function count_steps(started, max_steps, node)
  if started <= 0 or max_steps <= 0 then return nil end
  local steps = redis.call('HINCRBY', KEYS[K_META], 'steps', started)
  if steps <= max_steps then return nil end
  return {node, error_info('MaxStepsExceeded', string.format(
    "the run would start its %dth node run after '%s', over max_steps %d; raise workflow(max_steps=...) " ..
    "or make the loop stop (terminate_workflow, goto out of it)", steps, node, max_steps)), false}
end

-- The nodes an applied outcome released through directives and loops, kept so that a repeated
-- delivery of the outcome repeats their dispatch.
local function record_released(node, attempt, released)
  if #released > 0 then
    redis.call('HSET', KEYS[K_DYN], '#r:' .. node .. ':' .. attempt, cjson.encode(released))
  end
end

local function replay_released(node, attempt, out, cyc)
  local raw = redis.call('HGET', KEYS[K_DYN], '#r:' .. node .. ':' .. attempt)
  if not raw then return end
  for _, id in ipairs(cjson.decode(raw)) do
    if redis.call('HGET', KEYS[K_STATE], id) == 'READY' then
      push_ready(out, id, redis.call('HGET', KEYS[K_ATTEMPT], id) or '1')
      note_cycle(cyc, id)
    end
  end
end

-- True when nothing of the run is READY or WAITING: the PENDING nodes left can no longer run.
local function run_is_idle()
  for _, s in ipairs(redis.call('HVALS', KEYS[K_STATE])) do
    if s == 'READY' or s == 'WAITING' then return false end
  end
  return true
end

local function skip_leftovers()
  local all = redis.call('HGETALL', KEYS[K_STATE])
  local updates = {}
  for i = 1, #all, 2 do
    if all[i + 1] == 'PENDING' or all[i + 1] == 'READY' or all[i + 1] == 'WAITING' then
      updates[#updates + 1] = all[i]
      updates[#updates + 1] = 'SKIPPED'
    end
  end
  hset_many(KEYS[K_STATE], updates) -- (the run ends: 'ready' no longer matters)
end
