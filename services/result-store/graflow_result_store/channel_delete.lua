-- KEYS: channel hash, expiry hash. ARGV: keys. Returns how many live entries were deleted.
local deleted = 0
for _, key in ipairs(ARGV) do
  if redis.call('HEXISTS', KEYS[1], key) == 1 and not expired(key) then
    redis.call('HDEL', KEYS[1], key)
    redis.call('HDEL', KEYS[2], key)
    deleted = deleted + 1
  end
end
return deleted
