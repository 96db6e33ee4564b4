-- Dispatch a chunk of deliveries (graflow_coordinator.dispatch).
-- KEYS[1] = retry zset, KEYS[2] = ended runs stream; for delivery i: KEYS[3i] = dispatch record,
-- KEYS[3i+1] = queue stream, KEYS[3i+2] = run meta.
-- ARGV[1] = record ttl; for delivery i from b = 1 + (i-1)*5: node, attempt, due ms (0 = now),
-- queue, envelope bytes.
-- A delivery of a run that has ended (its meta's 'ended' > 0) is not enqueued (counted as ended).
-- One enqueued at once carries, beside the envelope, the last id of the ended runs stream: the run
-- was live when that was the last end (keys.ENDED_CURSOR_FIELD).
-- Returns {accepted, duplicates, ended}, or {-1, queue...} (nothing written) when a queue stream
-- that must be appended to does not exist (its consumer group vanished with it; the caller
-- recreates it).
local n = (#KEYS - 2) / 3
local ttl = tonumber(ARGV[1])
local missing = {}
for i = 1, n do
  local b = 1 + (i - 1) * 5
  if tonumber(ARGV[b + 3]) == 0 and redis.call('EXISTS', KEYS[3 * i + 1]) == 0 then
    missing[#missing + 1] = ARGV[b + 4]
  end
end
if #missing > 0 then
  table.insert(missing, 1, -1)
  return missing
end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local cursor = last[1] and last[1][1] or '0-0'
local accepted, duplicates, ended = 0, 0, 0
for i = 1, n do
  local b = 1 + (i - 1) * 5
  local node = ARGV[b + 1]
  local attempt = tonumber(ARGV[b + 2])
  local current = redis.call('HGET', KEYS[3 * i], node)
  local ended_at = tonumber(redis.call('HGET', KEYS[3 * i + 2], 'ended') or '0') or 0
  if current and tonumber(current) >= attempt then
    duplicates = duplicates + 1
  elseif ended_at > 0 then
    ended = ended + 1
  else
    redis.call('HSET', KEYS[3 * i], node, attempt)
    redis.call('EXPIRE', KEYS[3 * i], ttl)
    local due = tonumber(ARGV[b + 3])
    if due > 0 then
      redis.call('ZADD', KEYS[1], due, ARGV[b + 4] .. '\n' .. ARGV[b + 5])
    else
      redis.call('XADD', KEYS[3 * i + 1], '*', 'e', ARGV[b + 5], 'c', cursor)
    end
    accepted = accepted + 1
  end
end
return {accepted, duplicates, ended}
