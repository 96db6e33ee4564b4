-- KEYS: channel hash, expiry hash. Returns the live keys.
local out = {}
for _, key in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not expired(key) then
    out[#out + 1] = key
  end
end
return out
