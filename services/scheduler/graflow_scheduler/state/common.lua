-- Helpers shared by the run scripts; graflow_scheduler.state.scripts prepends this file to each one.
-- KEYS[1..7] of every run script: meta, state, attempt, join, errors, events, active-runs set.
local K_META, K_STATE, K_ATTEMPT, K_JOIN, K_ERRORS, K_EVENTS, K_ACTIVE = 1, 2, 3, 4, 5, 6, 7
-- apply_outcome, cancel_run and resolve_wait also get KEYS[8] dynamic nodes, KEYS[9] cycles (see
-- flow.lua), KEYS[10] waits, KEYS[11] child runs set, and the run's cell's KEYS[12] pending
-- feedback index, KEYS[13] wait deadlines, KEYS[14] ended child runs, KEYS[15] canceled runs whose
-- children are to be canceled (see waits.lua), KEYS[16] the ended-runs stream (gf:ended in the
-- default layout, read by workers). Every key a run script gets is of the run's cell (one slot on
-- a cluster; docs/architecture.md, "Redis Cluster: cells"): so is the idempotency key finish_run
-- expires, named from the cell's prefix.
local K_DYN, K_CYCLE, K_WAITS, K_CHILDREN, K_FEEDBACK, K_DEADLINES, K_ENDED, K_CANCEL = 8, 9, 10, 11, 12, 13, 14, 15
local K_RUNS_ENDED = 16
-- gf:ended keeps about this many entries (XADD MAXLEN ~): workers read it from where they are.
local RUNS_ENDED_MAXLEN = 100000
-- unpack() is bounded by the Lua C stack: write big hashes in chunks of field/value pairs.
local CHUNK_PAIRS = 1000

local function varint(n)
  local out = {}
  while n >= 128 do
    out[#out + 1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  out[#out + 1] = string.char(n)
  return table.concat(out)
end

local function pb_string(field, value)
  if value == nil or value == '' then return '' end
  return string.char(field * 8 + 2) .. varint(#value) .. value
end

-- graflow_api.v1.ErrorInfo{type=1, message=2} in protobuf wire format (retryable = false).
local function error_info(etype, message)
  return pb_string(1, etype) .. pb_string(2, message)
end

-- A run that has not ended: RUNNING, or PAUSED (only waits are left; see waits.lua).
local function is_live(status)
  return status == 'RUNNING' or status == 'PAUSED'
end

-- Sets node `id`'s state, keeping meta 'ready' = the number of READY nodes (waits.lua reads it).
-- `old`: the state before, when the caller knows it.
local function set_state(id, new, old)
  if old == nil then old = redis.call('HGET', KEYS[K_STATE], id) end
  redis.call('HSET', KEYS[K_STATE], id, new)
  if old == 'READY' and new ~= 'READY' then
    redis.call('HINCRBY', KEYS[K_META], 'ready', -1)
  elseif new == 'READY' and old ~= 'READY' then
    redis.call('HINCRBY', KEYS[K_META], 'ready', 1)
  end
end

local function hset_many(key, flat)
  for i = 1, #flat, 2 * CHUNK_PAIRS do
    redis.call('HSET', key, unpack(flat, i, math.min(i + 2 * CHUNK_PAIRS - 1, #flat)))
  end
end

-- Event stream entry: t type, ts ms, n node, a attempt, m message, w worker, err ErrorInfo bytes.
local function add_event(now, etype, node, attempt, message, worker, err)
  local f = {'t', etype, 'ts', now}
  if node ~= nil and node ~= '' then f[#f + 1] = 'n'; f[#f + 1] = node end
  if attempt ~= nil and tonumber(attempt) ~= 0 then f[#f + 1] = 'a'; f[#f + 1] = tostring(attempt) end
  if message ~= nil and message ~= '' then f[#f + 1] = 'm'; f[#f + 1] = message end
  if worker ~= nil and worker ~= '' then f[#f + 1] = 'w'; f[#f + 1] = worker end
  if err ~= nil and err ~= '' then f[#f + 1] = 'err'; f[#f + 1] = err end
  redis.call('XADD', KEYS[K_EVENTS], '*', unpack(f))
end

-- The cell's index of retained runs with `status` (zset run id -> created ms;
-- graflow_runtime.keys.runs_by_status), named from the active-runs set's key: the same cell, so the
-- same slot (like the idempotency key finish_run expires).
local ACTIVE_SUFFIX = ':runs:active'
local function status_index(status)
  return string.sub(KEYS[K_ACTIVE], 1, #KEYS[K_ACTIVE] - #ACTIVE_SUFFIX) .. ':runs:status:' .. status
end

-- Move the run from the index of status `old` (false/'' = none) to that of `new`.
local function move_status(run_id, old, new, created)
  if old and old ~= '' then redis.call('ZREM', status_index(old), run_id) end
  redis.call('ZADD', status_index(new), created, run_id)
end

-- End the run: status and end time, nodes that will not run (SKIPPED, or CANCELED on cancel),
-- the terminal event, out of the active set, and every run key (and its idempotency key) set to
-- expire after the retention period. `fields` are extra meta field/value pairs. With the wait
-- keys (KEYS[15]): the run's open waits leave the cell's indexes, a child run is recorded as
-- ended so that its parent node, if it waits for it, runs again, and a canceled run with child
-- runs is recorded so that the scheduler cancels them (both durable with the end itself). Every
-- end, whatever its status, is appended to gf:ended (KEYS[16]), so workers stop the run's work
-- (invariant 11).
local function finish_run(run_id, status, now, retention, idem_prefix, fields, ev_node, ev_message, ev_err)
  local before = redis.call('HMGET', KEYS[K_META], 'status', 'created')
  move_status(run_id, before[1], status, before[2] or now)
  local meta = {'status', status, 'ended', now, 'updated', now}
  for i = 1, #fields do meta[#meta + 1] = fields[i] end
  redis.call('HSET', KEYS[K_META], unpack(meta))
  if status ~= 'SUCCEEDED' then
    local leftover = (status == 'CANCELED') and 'CANCELED' or 'SKIPPED'
    local all = redis.call('HGETALL', KEYS[K_STATE])
    local updates = {}
    for i = 1, #all, 2 do
      local s = all[i + 1]
      if s == 'PENDING' or s == 'READY' or s == 'WAITING' then
        updates[#updates + 1] = all[i]
        updates[#updates + 1] = leftover
      end
    end
    hset_many(KEYS[K_STATE], updates)
  end
  add_event(now, 'RUN_' .. status, ev_node, 0, ev_message, '', ev_err)
  redis.call('SREM', KEYS[K_ACTIVE], run_id)
  for i = 1, 6 do redis.call('EXPIRE', KEYS[i], retention) end
  if #KEYS >= K_CANCEL then
    for i = K_DYN, K_CHILDREN do redis.call('EXPIRE', KEYS[i], retention) end
    local waits = redis.call('HGETALL', KEYS[K_WAITS])
    for i = 1, #waits, 2 do
      if string.sub(waits[i], 1, 1) == '@' then
        redis.call('ZREM', KEYS[K_FEEDBACK], run_id .. '/' .. waits[i + 1])
        redis.call('ZREM', KEYS[K_DEADLINES], run_id .. '/' .. waits[i + 1])
      end
    end
    if (redis.call('HGET', KEYS[K_META], 'parent') or '') ~= '' then
      redis.call('ZADD', KEYS[K_ENDED], now, run_id)
    end
    if status == 'CANCELED' and redis.call('SCARD', KEYS[K_CHILDREN]) > 0 then
      redis.call('ZADD', KEYS[K_CANCEL], now, run_id)
    end
  end
  redis.call('XADD', KEYS[K_RUNS_ENDED], 'MAXLEN', '~', RUNS_ENDED_MAXLEN, '*', 'r', run_id, 's', status)
  local idem = redis.call('HGET', KEYS[K_META], 'idem')
  if idem and idem ~= '' then redis.call('EXPIRE', idem_prefix .. idem, retention) end
end
