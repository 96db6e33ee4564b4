-- KEYS: channel hash, expiry hash. ARGV: keys. Returns a flat list key, value for live entries.
local out = {}
for _, key in ipairs(ARGV) do
  local value = redis.call('HGET', KEYS[1], key)
  if value and not expired(key) then
    out[#out + 1] = key
    out[#out + 1] = value
  end
end
return out
