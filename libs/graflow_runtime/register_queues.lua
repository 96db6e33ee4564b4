-- Register queue names in the set of those in use, up to a limit (graflow_runtime.queues).
-- KEYS: 1 the set gf:queues. ARGV: 1 the limit, then the names.
-- Names already in use are always accepted; the new ones are added together if they all fit
-- below the limit, else none is (a refused request registers nothing).
-- Returns the names refused.
local new = {}
for i = 2, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then new[#new + 1] = ARGV[i] end
end
if #new == 0 then return {} end
if redis.call('SCARD', KEYS[1]) + #new > tonumber(ARGV[1]) then return new end
for _, name in ipairs(new) do redis.call('SADD', KEYS[1], name) end
return {}
