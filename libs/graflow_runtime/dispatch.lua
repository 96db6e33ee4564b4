-- Dispatch a chunk of deliveries (graflow_runtime.dispatch), all of runs of one cell: every key
-- below is of that cell (one slot on a cluster).
-- KEYS[1] = retry zset, KEYS[2] = ended runs stream; for delivery i: KEYS[3i] = dispatch record,
-- KEYS[3i+1] = queue stream (the lane chosen by the caller), KEYS[3i+2] = run meta; last,
-- KEYS[3n+3] = the retry timer's wake-up stream, appended to (one entry kept) when a delayed
-- delivery is due before everything the retry zset held, so that the timers blocked on it move it
-- on time.
-- ARGV[1] = record ttl; for delivery i from b = 1 + (i-1)*7: node, attempt, due ms (0 = now),
-- queue (for a delayed delivery: the head of its retry timer member, "<queue>[ high][ sig=...]",
-- see keys.RETRY_TIMER), envelope bytes, signing key id and HMAC ('' when unsigned: the entry
-- then has no fields 'k' and 's').
-- A delivery of a run that has ended (its meta's 'ended' > 0) is not enqueued (counted as ended).
-- One enqueued at once carries, beside the envelope, the last id of the ended runs stream: the run
-- was live when that was the last end (keys.ENDED_CURSOR_FIELD).
-- Each queue's existence, each run's 'ended' and each dispatch record (read, written, expiry) are
-- checked or set once per call, however many deliveries share them.
-- Returns {accepted, duplicates, ended}, or {-1, queue...} (nothing written) when a queue stream
-- that must be appended to does not exist (its consumer group vanished with it; the caller
-- recreates it).
local n = (#KEYS - 3) / 3
local ttl = tonumber(ARGV[1])
local missing, exists = {}, {}
for i = 1, n do
  local b = 1 + (i - 1) * 7
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
-- The dispatch records' attempts of this call's nodes: one HMGET per record (mostly one run).
local records, nodes_of = {}, {}
for i = 1, n do
  local record = KEYS[3 * i]
  if not nodes_of[record] then
    nodes_of[record] = {}
    records[#records + 1] = record
  end
  local nodes = nodes_of[record]
  nodes[#nodes + 1] = ARGV[1 + (i - 1) * 7 + 1]
end
local dispatched = {} -- record -> node -> highest attempt dispatched (updated as deliveries are accepted)
for _, record in ipairs(records) do
  local nodes, known = nodes_of[record], {}
  local values = redis.call('HMGET', record, unpack(nodes))
  for j, node in ipairs(nodes) do known[node] = tonumber(values[j]) end
  dispatched[record] = known
end
local accepted, duplicates, ended = 0, 0, 0
-- run meta key -> its end's ms (0 = live); dispatch record key -> flat node, attempt to write.
local ended_at, writes = {}, {}
local first_due, wake -- the retry zset's earliest due time (read at the first delay); wake the timers
for i = 1, n do
  local b = 1 + (i - 1) * 7
  local node = ARGV[b + 1]
  local attempt = tonumber(ARGV[b + 2])
  local record, meta = KEYS[3 * i], KEYS[3 * i + 2]
  local current = dispatched[record][node]
  if ended_at[meta] == nil then
    ended_at[meta] = tonumber(redis.call('HGET', meta, 'ended') or '0') or 0
  end
  if current and current >= attempt then
    duplicates = duplicates + 1
  elseif ended_at[meta] > 0 then
    ended = ended + 1
  else
    dispatched[record][node] = attempt
    local w = writes[record] or {}
    writes[record] = w
    w[#w + 1] = node
    w[#w + 1] = attempt
    local due = tonumber(ARGV[b + 3])
    if due > 0 then
      if first_due == nil then
        local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
        first_due = first[2] and tonumber(first[2]) or math.huge
      end
      redis.call('ZADD', KEYS[1], due, ARGV[b + 4] .. '\n' .. ARGV[b + 5])
      if due < first_due then
        first_due, wake = due, true
      end
    else
      if ARGV[b + 6] == '' then
        redis.call('XADD', KEYS[3 * i + 1], '*', 'e', ARGV[b + 5], 'c', cursor)
      else
        redis.call('XADD', KEYS[3 * i + 1], '*', 'e', ARGV[b + 5], 'c', cursor, 'k', ARGV[b + 6], 's', ARGV[b + 7])
      end
    end
    accepted = accepted + 1
  end
end
-- Each record written once (a chunk holds at most graflow_coordinator.dispatch.CHUNK deliveries).
for _, record in ipairs(records) do
  if writes[record] then
    redis.call('HSET', record, unpack(writes[record]))
    redis.call('EXPIRE', record, ttl)
  end
end
if wake then
  redis.call('XADD', KEYS[#KEYS], 'MAXLEN', 1, '*', 'due', first_due)
end
return {accepted, duplicates, ended}
