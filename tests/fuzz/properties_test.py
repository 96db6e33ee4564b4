"""Properties over gRPC and the bus against a live stack (real processes, one per module), and
the fuzz script's short run on the same stack, as CI runs them.

Every input of SubmitRun, the result-store's Channel* calls, RespondFeedback, the dead-letter
calls and every other unary RPC (its request filled from its descriptor) gets a well-formed answer
within 10 s: OK, or a documented refusal (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION,
RESOURCE_EXHAUSTED...) with a message; never UNKNOWN, INTERNAL, UNAVAILABLE or a hang. Every
envelope and outcome put on the bus is consumed. After each property every process is alive and
no service logged an exception. The inputs are ``graflow_runtime.testing.hostile``'s, the same
generators as the fuzz script's.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import grpc
import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import given, settings

from graflow.devstack import LocalStack
from graflow_runtime.testing.properties import PROPERTY_SETTINGS, RANDOMS
from tests.e2e.conftest import module_stack
from tests.fuzz.fuzz import bus_backlog, parse_args, run, stack_pools
from tests.fuzz.surfaces import (
    SURFACES,
    TIMEOUT_S,
    Pools,
    bus_fields,
    bus_signer,
    draw,
    open_channels,
    stack_problems,
    stubs_of,
    verdict,
)

# Fewer examples than the in-process properties: each is a call to a real process, and CI runs the
# fuzz script's 2,000 inputs beside them.
STACK_SETTINGS = settings(PROPERTY_SETTINGS, max_examples=100)


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    with module_stack(request, workers=1, task_modules=("tests.fuzz.tasks",)) as stack:
        yield stack


@pytest.fixture(scope="module")
def pools(stack: LocalStack) -> Pools:
    return asyncio.run(stack_pools(stack))


@pytest.fixture(scope="module")
def stubs(stack: LocalStack) -> Iterator[dict[str, object]]:
    channels = open_channels(stack, grpc.insecure_channel)
    yield stubs_of(channels)
    for channel in channels.values():
        channel.close()


@pytest.mark.parametrize("surface", ["submit", "channel", "feedback", "deadletters", "other"])
def test_every_call_gets_a_well_formed_answer_within_10_s(
    stack: LocalStack, stubs: dict[str, object], pools: Pools, surface: str
) -> None:
    @STACK_SETTINGS
    @given(RANDOMS)
    def answered(rng: random.Random) -> None:
        item = draw(surface, rng, pools)
        try:
            getattr(stubs[item.service], item.method)(item.request, timeout=TIMEOUT_S)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
        assert verdict(code, details) is None, f"{code.name} {details!r} answered {item.describe()}"

    answered()
    assert stack_problems(stack) == []


@pytest.mark.parametrize("surface", ["envelope", "outcome"])
def test_every_bus_entry_is_consumed_and_breaks_nothing(
    stack: LocalStack, pools: Pools, surface: str
) -> None:
    conn = redis.Redis.from_url(stack.redis_url)
    signer = bus_signer(stack)

    @STACK_SETTINGS
    @given(RANDOMS)
    def appended(rng: random.Random) -> None:
        item = draw(surface, rng, pools)
        conn.xadd(item.method, bus_fields(item, signer))

    appended()
    conn.close()

    async def backlog() -> dict[str, int]:
        async with aioredis.Redis.from_url(stack.redis_url) as client:
            return await bus_backlog(client, timeout_s=120)

    assert asyncio.run(backlog()) == {"envelope": 0, "outcome": 0}
    assert stack_problems(stack) == []


def test_the_fuzz_script_finds_no_crash_or_hang_in_2000_inputs(
    stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(stack, parse_args(["--inputs", "2000", "--seed", "ci"]))

    out = capsys.readouterr().out
    assert code == 0, out
    assert "fuzzed 2,000 inputs in" in out and "inputs/s" in out
    for surface in SURFACES:
        assert f"\n{surface} " in out
    assert "slowest answer: " in out and "peak RSS: coordinator " in out
    assert "crashes: 0, hangs: 0" in out
