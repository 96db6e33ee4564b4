-- Register queue names in the set of those in use, up to a limit (graflow_runtime.queues).
-- KEYS: 1 the set gf:queues. ARGV: 1 the limit, then the names.
-- Names already in use are always accepted; new ones are added while the set is below the limit.
-- Returns the names refused.
local limit = tonumber(ARGV[1])
local size = redis.call('SCARD', KEYS[1])
local refused = {}
for i = 2, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then
    if size < limit then
      redis.call('SADD', KEYS[1], ARGV[i])
      size = size + 1
    else
      refused[#refused + 1] = ARGV[i]
    end
  end
end
return refused
