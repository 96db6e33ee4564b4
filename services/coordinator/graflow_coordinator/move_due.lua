-- Move due deliveries from the retry timer to their queues (graflow_coordinator.retry_timer).
-- KEYS[1] = retry zset. ARGV: now ms, max members, normal lane key prefix, high lane key prefix.
-- Streams are derived from the members, in the timer's cell (their keys carry its hash tag, so on
-- a Redis Cluster they are in the timer's slot; docs/architecture.md, "Redis Cluster: cells"): a
-- member is "<queue>\n<envelope>" (normal lane) or "<queue> high\n<envelope>" (high lane); a
-- signed envelope's head ends with " sig=<key id>:<hmac>", appended as the entry's 'k' and 's'.
-- Returns {moved, malformed, next due ms or -1, queue whose stream is missing...}. Members of a
-- queue whose stream is missing stay put (the caller recreates the consumer group first).
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local moved, malformed = 0, 0
local missing = {}
for _, member in ipairs(due) do
  local nl = string.find(member, '\n', 1, true)
  if not nl then
    redis.call('ZREM', KEYS[1], member)
    malformed = malformed + 1
  else
    local head = string.sub(member, 1, nl - 1)
    local prefix = ARGV[3]
    local queue, key_id, mac
    for token in string.gmatch(head, '%S+') do
      if not queue then
        queue = token
      elseif token == 'high' then
        prefix = ARGV[4]
      elseif string.sub(token, 1, 4) == 'sig=' then
        key_id, mac = string.match(token, '^sig=([^:]+):(%x+)$')
      end
    end
    queue = queue or ''
    local stream = prefix .. queue
    if redis.call('EXISTS', stream) == 1 then
      if key_id then
        redis.call('XADD', stream, '*', 'e', string.sub(member, nl + 1), 'k', key_id, 's', mac)
      else
        redis.call('XADD', stream, '*', 'e', string.sub(member, nl + 1))
      end
      redis.call('ZREM', KEYS[1], member)
      moved = moved + 1
    else
      missing[#missing + 1] = queue
    end
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_due = -1
if #first > 0 then next_due = math.floor(tonumber(first[2])) end
local reply = {moved, malformed, next_due}
for _, queue in ipairs(missing) do reply[#reply + 1] = queue end
return reply
