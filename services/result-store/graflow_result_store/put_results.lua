-- Store a batch of results; the highest attempt wins (graflow_result_store.scripts).
-- KEYS: per item, the result hash then the attempt hash.
-- ARGV: retention seconds, then per item node id, attempt, NodeResult bytes.
-- Returns per item 1 = stored, 2 = duplicate (same attempt kept), 3 = stale (newer attempt stored).
-- Items are handled per run (a batch is mostly one run): one HMGET of the stored attempts, one
-- HSET of each hash and one EXPIRE each, in chunks (unpack() is bounded by the Lua stack).
local CHUNK = 1000
local ttl = tonumber(ARGV[1])
local count = (#ARGV - 1) / 3
local runs, items_of = {}, {} -- result hash keys in order; result hash -> item indexes
for i = 1, count do
  local results = KEYS[2 * i - 1]
  if not items_of[results] then
    items_of[results] = {}
    runs[#runs + 1] = results
  end
  local items = items_of[results]
  items[#items + 1] = i
end
local out = {}
for _, results in ipairs(runs) do
  local items = items_of[results]
  local attempts = KEYS[2 * items[1]]
  local stored = {} -- node -> highest attempt stored (updated as items are stored)
  for first = 1, #items, CHUNK do
    local nodes = {}
    for j = first, math.min(first + CHUNK - 1, #items) do nodes[#nodes + 1] = ARGV[3 * items[j] - 1] end
    local values = redis.call('HMGET', attempts, unpack(nodes))
    for j, node in ipairs(nodes) do stored[node] = tonumber(values[j]) end
  end
  local values, attempt_of = {}, {}
  for _, i in ipairs(items) do
    local node, attempt = ARGV[3 * i - 1], tonumber(ARGV[3 * i])
    local current = stored[node]
    if current == nil or current < attempt then
      stored[node] = attempt
      values[#values + 1] = node
      values[#values + 1] = ARGV[3 * i + 1]
      attempt_of[#attempt_of + 1] = node
      attempt_of[#attempt_of + 1] = attempt
      out[i] = 1
    elseif current == attempt then
      out[i] = 2
    else
      out[i] = 3
    end
  end
  if #values > 0 then
    for first = 1, #values, 2 * CHUNK do
      local last = math.min(first + 2 * CHUNK - 1, #values)
      redis.call('HSET', results, unpack(values, first, last))
      redis.call('HSET', attempts, unpack(attempt_of, first, last))
    end
    redis.call('EXPIRE', results, ttl)
    redis.call('EXPIRE', attempts, ttl)
  end
end
return out
