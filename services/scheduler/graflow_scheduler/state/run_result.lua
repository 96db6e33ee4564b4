-- A run's end as WaitRun answers it, in one step: the run's meta (HGETALL) and, when the run
-- SUCCEEDED, its sinks' results if they total at most ARGV[1] bytes.
-- KEYS[1] gf:run:{R} (meta), KEYS[2] gf:res:{R}: the result-store's results (node -> NodeResult
-- bytes), read only; both keys carry the run's hash tag (one slot).
-- Returns {meta, inline, values}: inline 1 with the values (false for a sink without a result) in
-- the order of the meta's `sinks`, 0 when they are larger (the caller reads them with
-- GetResults), -1 when the run has not succeeded (or does not exist: meta empty).
local meta = redis.call('HGETALL', KEYS[1])
if redis.call('HGET', KEYS[1], 'status') ~= 'SUCCEEDED' then
  return {meta, -1, {}}
end
local sinks = cjson.decode(redis.call('HGET', KEYS[1], 'sinks') or '[]')
if #sinks == 0 then
  return {meta, 1, {}}
end
local total = 0
for i = 1, #sinks do
  total = total + redis.call('HSTRLEN', KEYS[2], sinks[i])
end
if total > tonumber(ARGV[1]) then
  return {meta, 0, {}}
end
-- HMGET in chunks: unpack() takes at most a few thousand values (a fan-out without a join has
-- one sink per member).
local values = {}
for i = 1, #sinks, 1000 do
  local chunk = redis.call('HMGET', KEYS[2], unpack(sinks, i, math.min(i + 999, #sinks)))
  for j = 1, #chunk do values[#values + 1] = chunk[j] end
end
return {meta, 1, values}
