-- Register a workflow (graflow_scheduler.state.workflows): the full record and its summary, with
-- the next version, in one step. Lua cannot edit protobuf, so the caller sends each record without
-- its version and the script appends field 5 (RegisteredWorkflow.version, a varint): a parser takes
-- the last value of a repeated scalar field, so the appended one is the version.
-- KEYS: 1 records hash, 2 summaries hash, 3 versions hash (one tag: the same slot).
-- ARGV: name, record bytes, summary bytes, most workflows.
-- Runs after common.lua (its varint).
-- Returns the new version, or -1 when the name is new and there are `most` workflows already.
local name = ARGV[1]
if redis.call('HEXISTS', KEYS[1], name) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  return -1
end
local version = redis.call('HINCRBY', KEYS[3], name, 1)
local field = string.char(5 * 8) .. varint(version)
redis.call('HSET', KEYS[1], name, ARGV[2] .. field)
redis.call('HSET', KEYS[2], name, ARGV[3] .. field)
return version
