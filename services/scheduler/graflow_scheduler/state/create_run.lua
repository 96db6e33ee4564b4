-- Create a run: meta, node states (roots READY at attempt 1, others PENDING), indexes, events.
-- KEYS: 1-7 run keys (see common.lua), 8 runs index zset, 9 idempotency key (unused without one),
--       10 the run's channel hash (the result-store's layout: key -> Payload bytes), and for a
--       child run 11 the parent's meta, 12 the parent's child runs set, 13 the parent's node states.
-- ARGV: run_id, name, graph_hash, now_ms, labels_json, sinks_json, idem_key ('' = none),
--       parent run id, parent node id ('' x2 unless a child run), n_roots, n_nodes, retention s,
--       then the root ids, then every other node id (groups included), n_nodes in all, then the
--       run's arguments as channel key, Payload bytes pairs (written with the run, so its first
--       task reads them; the channel expires a retention from now, as the result-store's writes).
-- Returns {created (1/0), run_id}: with an idempotency key that is taken, the existing run id;
-- {-1, parent status} when the parent run has ended, {-2, ''} when it has no node of that id
-- (a child is refused, nothing is written). The
-- idempotency key lives as long as the run: finish_run sets it to expire with the run.
local run_id, now, idem = ARGV[1], ARGV[4], ARGV[7]
if idem ~= '' then
  local existing = redis.call('GET', KEYS[9])
  if existing then return {0, existing} end
end
if redis.call('EXISTS', KEYS[K_META]) == 1 then return {0, run_id} end
local parent, parent_node = ARGV[8], ARGV[9]
if parent ~= '' then
  local parent_status = redis.call('HGET', KEYS[11], 'status') or 'unknown'
  if not is_live(parent_status) then return {-1, parent_status} end
  if redis.call('HEXISTS', KEYS[13], parent_node) == 0 then return {-2, ''} end
  redis.call('SADD', KEYS[12], run_id)
end
if idem ~= '' then redis.call('SET', KEYS[9], run_id) end

local n_roots, total, retention = tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[12]
local first = 13
local last = first + total - 1
redis.call('HSET', KEYS[K_META], 'name', ARGV[2], 'status', 'RUNNING', 'graph', ARGV[3],
  'created', now, 'updated', now, 'ended', '0', 'pending', tostring(total),
  'labels', ARGV[5], 'sinks', ARGV[6], 'idem', ARGV[7], 'parent', parent, 'parent_node', parent_node,
  'ready', tostring(n_roots))
local states, attempts = {}, {}
for i = first, last do
  if i < first + n_roots then
    states[#states + 1] = ARGV[i]; states[#states + 1] = 'READY'
    attempts[#attempts + 1] = ARGV[i]; attempts[#attempts + 1] = '1'
  else
    states[#states + 1] = ARGV[i]; states[#states + 1] = 'PENDING'
  end
end
hset_many(KEYS[K_STATE], states)
hset_many(KEYS[K_ATTEMPT], attempts)
if last < #ARGV then
  local arguments = {}
  for i = last + 1, #ARGV do arguments[#arguments + 1] = ARGV[i] end
  hset_many(KEYS[10], arguments)
  redis.call('EXPIRE', KEYS[10], retention)
end
redis.call('ZADD', KEYS[8], now, run_id)
move_status(run_id, false, 'RUNNING', now)
redis.call('SADD', KEYS[K_ACTIVE], run_id)
add_event(now, 'RUN_CREATED', '', 0, ARGV[2], '', '')
for i = first, first + n_roots - 1 do
  add_event(now, 'NODE_READY', ARGV[i], 1, '', '', '')
end
return {1, run_id}
