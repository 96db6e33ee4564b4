-- KEYS: channel hash, expiry hash. ARGV: key, operation (1 append, 2 prepend, 3 add), JSON text of
-- the value, ttl ms (0 = keep the key's expiry), retention s, largest value in bytes, most keys of a
-- run.
-- Returns {0, new Payload bytes} or {code, ''}: 1 = the stored value is not a list, 2 = not a number,
-- or {3, size}: the new value would be larger than the limit, {4, ''}: the key is new and the run
-- holds the most keys allowed (nothing is changed).
local key, op, value = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local ttl_ms, retention, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local raw = redis.call('HGET', KEYS[1], key)
if not raw and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[7]) then return {4, ''} end
local current = nil
if raw and not expired(key) then
  current = payload_json(raw)
  if current == nil then return {op == 3 and 2 or 1, ''} end
end
local updated
if op == 3 then
  local number = 0
  if current then
    if not string.match(current, '^%s*%-?%d+%.?%d*[eE]?[-+]?%d*%s*$') then return {2, ''} end
    number = tonumber(current)
    if number == nil then return {2, ''} end
  end
  local sum = number + tonumber(value)
  if sum == math.floor(sum) and math.abs(sum) < 2 ^ 53 then
    updated = string.format('%d', sum)
  else
    updated = string.format('%.17g', sum)
  end
else
  if current == nil then
    updated = '[' .. value .. ']'
  else
    local inner = string.match(current, '^%s*%[(.*)%]%s*$')
    if inner == nil then return {1, ''} end
    if string.match(inner, '^%s*$') then
      updated = '[' .. value .. ']'
    elseif op == 1 then
      updated = '[' .. inner .. ',' .. value .. ']'
    else
      updated = '[' .. value .. ',' .. inner .. ']'
    end
  end
end
if #updated > max_bytes then return {3, tostring(#updated)} end
local stored = payload_of(updated)
redis.call('HSET', KEYS[1], key, stored)
if ttl_ms > 0 then
  redis.call('HSET', KEYS[2], key, now + ttl_ms)
end
redis.call('EXPIRE', KEYS[1], retention)
redis.call('EXPIRE', KEYS[2], retention)
return {0, stored}
