-- Lua can't parse protobuf in general, but a Payload has two length-delimited fields (1 content
-- type, 2 data), so the update script reads and writes them itself. List operations splice JSON
-- text (existing elements are never re-encoded, so their numbers and empty objects stay as sent);
-- ADD parses the stored number and writes it back with 17 significant digits.
local function varint(n)
  local out = {}
  repeat
    local b = n % 128
    n = math.floor(n / 128)
    if n > 0 then b = b + 128 end
    out[#out + 1] = string.char(b)
  until n == 0
  return table.concat(out)
end
local function payload_json(raw)  -- the JSON text of a Payload, or nil when it is not JSON
  local pos, content_type, data = 1, '', ''
  while pos <= #raw do
    local tag = string.byte(raw, pos)
    pos = pos + 1
    local len, shift, b = 0, 1, 128
    while b >= 128 do
      b = string.byte(raw, pos)
      if b == nil then return nil end
      pos = pos + 1
      len = len + (b % 128) * shift
      shift = shift * 128
    end
    local field = string.sub(raw, pos, pos + len - 1)
    pos = pos + len
    if tag == 10 then content_type = field elseif tag == 18 then data = field else return nil end
  end
  if content_type ~= '' and content_type ~= 'application/json' then return nil end
  return data
end
local function payload_of(json)
  return string.char(18) .. varint(#json) .. json
end
