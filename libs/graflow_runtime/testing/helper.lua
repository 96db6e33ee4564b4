-- A helper that scripts_test's script loads first.
local function counted(key)
  return redis.call('INCR', key)
end
