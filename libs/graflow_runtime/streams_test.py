import pytest
import redis.asyncio as aioredis

from graflow_runtime.streams import is_stream_id, stream_id, tail_id, trim_below


def test_stream_ids_compare_by_milliseconds_then_sequence():
    assert stream_id(b"1700000000000-2") == (1700000000000, 2)
    assert stream_id("5") == (5, 0)
    assert sorted([b"10-1", b"9-5", b"10-0"], key=stream_id) == [b"9-5", b"10-0", b"10-1"]


async def test_trim_below_keeps_the_floor_and_everything_after_it(redis: aioredis.Redis):
    for ms in range(1, 301):
        await redis.xadd("s", {"f": "v"}, id=f"{ms}-0")

    removed = await trim_below(redis, "s", (201, 0))

    # MINID ~ evicts whole macro nodes only, so some entries below the floor may stay; none above go.
    assert removed + await redis.xlen("s") == 300
    first = (await redis.xrange("s", count=1))[0][0]
    assert stream_id(first) <= (201, 0)
    assert len(await redis.xrange("s", min="201-0", max="+", count=1000)) == 100


async def test_tail_id_is_the_newest_entry_or_zero_for_a_missing_stream(redis: aioredis.Redis):
    assert await tail_id(redis, "s") == b"0-0"
    await redis.xadd("s", {"f": "v"}, id="5-1")
    await redis.xadd("s", {"f": "v"}, id="7-0")
    assert await tail_id(redis, "s") == b"7-0"


@pytest.mark.parametrize(
    "good", ["0-0", "1700000000000-5", "42", "18446744073709551615-18446744073709551615"]
)
def test_stream_ids_redis_accepts(good):
    assert is_stream_id(good)


@pytest.mark.parametrize(
    "bad", ["", "1-0\n", " 1-0", "1-", "-1", "1-0-0", "18446744073709551616-0", "١-0", "+"]
)
def test_stream_ids_with_anything_around_or_out_of_range_are_refused(bad):
    assert not is_stream_id(bad)
