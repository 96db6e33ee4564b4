-- Helpers of the channel scripts, which load this file first (graflow_result_store.scripts).
-- KEYS[1] = channel hash, KEYS[2] = expiry hash of every channel script. `now` is Redis' clock in
-- Unix ms; expired(key) deletes an entry whose TTL has passed and says so.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function expired(key)
  local at = redis.call('HGET', KEYS[2], key)
  if at and tonumber(at) <= now then
    redis.call('HDEL', KEYS[1], key)
    redis.call('HDEL', KEYS[2], key)
    return true
  end
  return false
end
