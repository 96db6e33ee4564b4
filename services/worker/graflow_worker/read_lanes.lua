-- Take up to COUNT new entries from the queue streams in order (graflow_worker.consumer): the high
-- lanes first, then the normal lanes, each read only for the slots the earlier ones left free, so
-- a read never takes more entries than the worker has free slots.
-- KEYS = streams in reading order. ARGV = group, consumer, count.
-- Returns XREADGROUP's reply shape: {{stream, {{id, {field, value, ...}}, ...}}, ...}.
local left = tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS do
  local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', left, 'STREAMS', KEYS[i], '>')
  if read then
    out[#out + 1] = read[1]
    left = left - #read[1][2]
    if left <= 0 then break end
  end
end
return out
