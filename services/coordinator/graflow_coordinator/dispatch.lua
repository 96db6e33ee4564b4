-- Dispatch a chunk of deliveries (graflow_coordinator.dispatch).
-- KEYS[1] = retry zset, KEYS[2] = ended runs stream; for delivery i: KEYS[3i] = dispatch record,
-- KEYS[3i+1] = queue stream, KEYS[3i+2] = run meta.
-- ARGV[1] = record ttl; for delivery i from b = 1 + (i-1)*5: node, attempt, due ms (0 = now),
-- queue, envelope bytes.
-- A delivery of a run that has ended (its meta's 'ended' > 0) is not enqueued (counted as ended).
-- One enqueued at once carries, beside the envelope, the last id of the ended runs stream: the run
-- was live when that was the last end (keys.ENDED_CURSOR_FIELD).
-- Each queue's existence, each run's 'ended' and each dispatch record's expiry are checked or set
-- once per call, however many deliveries share them.
-- Returns {accepted, duplicates, ended}, or {-1, queue...} (nothing written) when a queue stream
-- that must be appended to does not exist (its consumer group vanished with it; the caller
-- recreates it).
local n = (#KEYS - 2) / 3
local ttl = tonumber(ARGV[1])
local missing, exists = {}, {}
for i = 1, n do
  local b = 1 + (i - 1) * 5
  local queue = KEYS[3 * i + 1]
  if tonumber(ARGV[b + 3]) == 0 then
    if exists[queue] == nil then exists[queue] = redis.call('EXISTS', queue) == 1 end
    if not exists[queue] then missing[#missing + 1] = ARGV[b + 4] end
  end
end
if #missing > 0 then
  table.insert(missing, 1, -1)
  return missing
end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local cursor = last[1] and last[1][1] or '0-0'
local accepted, duplicates, ended = 0, 0, 0
-- run meta key -> its end's ms (0 = live); dispatch record key -> true once written in this call.
local ended_at, recorded, records = {}, {}, {}
for i = 1, n do
  local b = 1 + (i - 1) * 5
  local node = ARGV[b + 1]
  local attempt = tonumber(ARGV[b + 2])
  local record, meta = KEYS[3 * i], KEYS[3 * i + 2]
  local current = redis.call('HGET', record, node)
  if ended_at[meta] == nil then
    ended_at[meta] = tonumber(redis.call('HGET', meta, 'ended') or '0') or 0
  end
  if current and tonumber(current) >= attempt then
    duplicates = duplicates + 1
  elseif ended_at[meta] > 0 then
    ended = ended + 1
  else
    redis.call('HSET', record, node, attempt)
    if not recorded[record] then
      recorded[record] = true
      records[#records + 1] = record
    end
    local due = tonumber(ARGV[b + 3])
    if due > 0 then
      redis.call('ZADD', KEYS[1], due, ARGV[b + 4] .. '\n' .. ARGV[b + 5])
    else
      redis.call('XADD', KEYS[3 * i + 1], '*', 'e', ARGV[b + 5], 'c', cursor)
    end
    accepted = accepted + 1
  end
end
for _, record in ipairs(records) do redis.call('EXPIRE', record, ttl) end
return {accepted, duplicates, ended}
