"""Lua scripts of the result-store (the ``.lua`` files beside this module): each operation is one
atomic round trip to Redis.

Results of a run live in two hashes with the same hash tag: ``gf:res:{R}`` (node -> NodeResult
bytes, readable with a plain HMGET) and ``gf:res:{R}:attempt`` (node -> attempt of the stored
result). Lua can't parse protobuf, so the attempt that fences writes is kept beside the value.

Channels use the same pattern: ``gf:chan:{R}`` (key -> Payload bytes) and ``gf:chan:{R}:exp``
(key -> expiry as Unix ms, only for entries written with a TTL). Redis 7.0 has no per-field TTL, so
an expired entry is treated as missing by every read and deleted lazily by the script that meets
it; the whole channel still expires with the run's retention. Scripts take "now" from Redis ``TIME``
so that every replica of the service agrees on expiry (``channel_expiry.lua``, loaded first by
every channel script).
"""

from __future__ import annotations

from graflow_runtime.scripts import LuaScript

PUT_RESULTS = LuaScript.load(__package__, "put_results.lua")
CHANNEL_GET = LuaScript.load(__package__, "channel_expiry.lua", "channel_get.lua")
CHANNEL_SET = LuaScript.load(__package__, "channel_expiry.lua", "channel_set.lua")
CHANNEL_DELETE = LuaScript.load(__package__, "channel_expiry.lua", "channel_delete.lua")
CHANNEL_KEYS = LuaScript.load(__package__, "channel_expiry.lua", "channel_keys.lua")
CHANNEL_UPDATE = LuaScript.load(__package__, "channel_expiry.lua", "payload.lua", "channel_update.lua")
