"""LuaScript: package resources in, EVALSHA out, reloaded after Redis lost its scripts (a real
redis-server; SCRIPT FLUSH is what a Redis restart does to them)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from graflow_runtime import testing
from graflow_runtime.scripts import LuaScript

# testing/helper.lua defines counted(key); testing/counted.lua returns {counted(KEYS[1]), ARGV[1]}.
COUNTED = LuaScript.load(testing.__name__, "helper.lua", "counted.lua")
FAILING = LuaScript("failing.lua", "if ARGV[1] == 'fail' then return redis.error_reply('told to') end "
                                   "return redis.call('INCR', KEYS[1])")


def test_a_script_is_its_files_in_order_named_after_the_last() -> None:
    assert COUNTED.name == "counted.lua"
    assert COUNTED.source.index("local function counted") < COUNTED.source.index("return {counted(")


async def test_a_script_redis_lost_is_loaded_again_and_runs_once(redis: aioredis.Redis) -> None:
    assert await COUNTED.run(redis, ["n"], ["a"]) == [1, b"a"]
    await redis.script_flush()
    assert await COUNTED.run(redis, ["n"], ["b"]) == [2, b"b"]
    assert await redis.script_exists(COUNTED.sha) == [True]


async def test_many_calls_run_in_one_pipeline_with_their_replies_in_order(redis: aioredis.Redis) -> None:
    calls = [(["n"], [str(i)]) for i in range(5)]
    assert await COUNTED.run_many(redis, calls) == [[i + 1, str(i).encode()] for i in range(5)]
    assert await redis.get("n") == b"5"


async def test_pipelined_calls_that_met_noscript_run_again_once_loaded(redis: aioredis.Redis) -> None:
    await COUNTED.load_into(redis)
    await redis.script_flush()
    replies = await COUNTED.run_many(redis, [([f"n{i}"], [str(i)]) for i in range(3)])
    assert replies == [[1, b"0"], [1, b"1"], [1, b"2"]]  # each call ran exactly once
    assert await redis.script_exists(COUNTED.sha) == [True]


async def test_an_error_reply_is_raised_once_every_call_of_the_pipeline_ran(redis: aioredis.Redis) -> None:
    with pytest.raises(ResponseError, match="told to"):
        await FAILING.run_many(redis, [(["n"], ["ok"]), (["n"], ["fail"]), (["n"], ["ok"])])
    assert await redis.get("n") == b"2"
