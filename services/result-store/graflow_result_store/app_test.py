"""The ResultStore API against a real Redis, through an in-process server on a free port."""

from __future__ import annotations

import asyncio
import re

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from graflow_api.v1 import common_pb2, result_store_pb2, result_store_pb2_grpc, workflow_pb2
from graflow_runtime import keys
from graflow_runtime.graphs import graph_hash

from graflow_result_store.app import SERVICE_NAME
from graflow_result_store.conftest import RUN_1, RUN_2, RUN_3, RUN_4, start_app
from graflow_result_store.store import run_keys

Disposition = result_store_pb2.PutResultsResponse
STORED, DUPLICATE, STALE = (
    Disposition.DISPOSITION_STORED,
    Disposition.DISPOSITION_DUPLICATE,
    Disposition.DISPOSITION_STALE,
)


def result(node: str, attempt: int, value: object, run: str = RUN_1) -> result_store_pb2.NodeResult:
    data = value if isinstance(value, bytes) else str(value).encode()
    return result_store_pb2.NodeResult(
        run_id=run,
        node_id=node,
        attempt=attempt,
        value=common_pb2.Payload(content_type="application/json", data=data),
    )


async def put(stub, *results: result_store_pb2.NodeResult) -> list[int]:
    response = await stub.PutResults(result_store_pb2.PutResultsRequest(results=list(results)))
    return list(response.dispositions)


async def values(stub, run: str, *nodes: str) -> dict[str, bytes]:
    response = await stub.GetResults(result_store_pb2.GetResultsRequest(run_id=run, node_ids=list(nodes)))
    return {r.node_id: r.value.data for r in response.results}


async def test_same_attempt_stored_twice_keeps_the_first_value(stub):
    assert await put(stub, result("a", 1, 10)) == [STORED]
    assert await put(stub, result("a", 1, 99)) == [DUPLICATE]
    assert await values(stub, RUN_1, "a") == {"a": b"10"}


async def test_newer_attempt_replaces_and_older_attempt_is_stale(stub):
    assert await put(stub, result("a", 1, 1), result("a", 3, 3)) == [STORED, STORED]
    assert await put(stub, result("a", 2, 2)) == [STALE]
    response = await stub.GetResults(result_store_pb2.GetResultsRequest(run_id=RUN_1, node_ids=["a"]))
    assert response.results[0].attempt == 3
    assert response.results[0].value.data == b"3"
    assert response.results[0].stored_at_ms > 0


async def test_one_batch_spans_several_runs(stub):
    assert await put(stub, result("a", 1, 1, run=RUN_1), result("a", 1, 2, run=RUN_2)) == [STORED, STORED]
    assert await values(stub, RUN_1, "a") == {"a": b"1"}
    assert await values(stub, RUN_2, "a") == {"a": b"2"}


async def test_a_large_batch_of_interleaved_runs_keeps_the_highest_attempt_of_each_node(stub):
    await put(stub, result("n0", 5, 50, run=RUN_2))
    batch = [result(f"n{i}", 1, i, run=(RUN_1, RUN_2)[i % 2]) for i in range(2_500)]
    batch += [result("n1", 1, 999, run=RUN_2), result("n2", 2, 222), result("n2", 1, 0)]

    dispositions = await put(stub, *batch)

    assert dispositions[:2] == [STORED, STORED] and dispositions[2_500:] == [DUPLICATE, STORED, STALE]
    assert dispositions.count(STORED) == 2_501
    assert await values(stub, RUN_1, "n0", "n2", "n2498") == {"n0": b"0", "n2": b"222", "n2498": b"2498"}
    assert await values(stub, RUN_2, "n0", "n1", "n2499") == {"n0": b"50", "n1": b"1", "n2499": b"2499"}


async def test_results_expire_with_the_retention_period(stub, redis):
    await put(stub, result("a", 1, 1))
    assert 0 < await redis.ttl(f"gf:res:{{{RUN_1}}}") <= 3600
    assert 0 < await redis.ttl(f"gf:res:{{{RUN_1}}}:attempt") <= 3600


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (result_store_pb2.NodeResult(node_id="x", attempt=1), r"results\[1\]: run_id is empty"),
        (result_store_pb2.NodeResult(run_id=RUN_1, attempt=1), r"results\[1\].*node_id is required"),
        (result("x", 0, 1), r"results\[1\].*attempt must be >= 1"),
        (result("x", 1, b"x" * 2000), r"results\[1\].*2000 bytes, over the limit of 1024"),
    ],
)
async def test_a_bad_item_rejects_the_whole_batch_and_stores_nothing(stub, redis, bad, message):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await put(stub, result("good", 1, 1), bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, info.value.details())
    assert await redis.keys("gf:res:*") == []


async def test_get_results_lists_missing_nodes(stub):
    await put(stub, result("a", 1, 1))
    response = await stub.GetResults(
        result_store_pb2.GetResultsRequest(run_id=RUN_1, node_ids=["a", "b", "c"])
    )
    assert [r.node_id for r in response.results] == ["a"]
    assert list(response.missing_node_ids) == ["b", "c"]


async def test_get_results_without_run_id_is_invalid(stub):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetResults(result_store_pb2.GetResultsRequest(node_ids=["a"]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "run_id: run_id is empty" in info.value.details()


def spec(name: str = "w") -> workflow_pb2.WorkflowSpec:
    return workflow_pb2.WorkflowSpec(
        name=name,
        nodes=[workflow_pb2.NodeSpec(id="a", task_type="a"), workflow_pb2.NodeSpec(id="b", task_type="b")],
        edges=[workflow_pb2.EdgeSpec(from_id="a", to_id="b")],
    )


async def test_graphs_are_stored_once_under_their_content_hash(stub, redis):
    digest = graph_hash(spec())
    first = await stub.PutGraph(result_store_pb2.PutGraphRequest(graph_hash=digest, spec=spec()))
    again = await stub.PutGraph(result_store_pb2.PutGraphRequest(graph_hash=digest, spec=spec()))
    assert (first.created, again.created) == (True, False)
    fetched = await stub.GetGraph(result_store_pb2.GetGraphRequest(graph_hash=digest))
    assert fetched.spec == spec()
    assert await redis.keys("gf:graph:*") == [f"gf:graph:{digest}".encode()]


async def test_a_graph_whose_hash_does_not_match_is_rejected(stub, redis):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.PutGraph(
            result_store_pb2.PutGraphRequest(graph_hash=graph_hash(spec("other")), spec=spec())
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert graph_hash(spec()) in info.value.details()
    assert await redis.keys("gf:graph:*") == []


async def test_unknown_graph_is_not_found_naming_the_hash(stub):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetGraph(result_store_pb2.GetGraphRequest(graph_hash="abc123"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "abc123" in info.value.details()


def entry(key: str, value: bytes) -> result_store_pb2.ChannelEntry:
    return result_store_pb2.ChannelEntry(
        key=key, value=common_pb2.Payload(content_type="application/json", data=value)
    )


async def channel_values(stub, *keys: str, run: str = RUN_1) -> dict[str, bytes]:
    response = await stub.ChannelGet(result_store_pb2.ChannelGetRequest(run_id=run, keys=list(keys)))
    return {e.key: e.value.data for e in response.entries}


async def channel_keys(stub, run: str = RUN_1) -> list[str]:
    return list((await stub.ChannelKeys(result_store_pb2.ChannelKeysRequest(run_id=run))).keys)


async def test_channel_set_get_keys_and_delete(stub):
    await stub.ChannelSet(
        result_store_pb2.ChannelSetRequest(run_id=RUN_1, entries=[entry("x", b"1"), entry("y", b"2")])
    )
    response = await stub.ChannelGet(
        result_store_pb2.ChannelGetRequest(run_id=RUN_1, keys=["y", "missing", "x"])
    )
    assert [(e.key, e.value.data) for e in response.entries] == [("y", b"2"), ("x", b"1")]
    assert await channel_keys(stub) == ["x", "y"]
    assert await channel_keys(stub, run=RUN_3) == []
    deleted = await stub.ChannelDelete(
        result_store_pb2.ChannelDeleteRequest(run_id=RUN_1, keys=["x", "missing"])
    )
    assert deleted.deleted == 1
    assert await channel_keys(stub) == ["y"]


async def test_channel_entries_with_a_ttl_expire_and_others_stay(stub):
    await stub.ChannelSet(result_store_pb2.ChannelSetRequest(run_id=RUN_1, entries=[entry("keep", b"1")]))
    await stub.ChannelSet(
        result_store_pb2.ChannelSetRequest(run_id=RUN_1, entries=[entry("brief", b"2")], ttl_ms=150)
    )
    assert await channel_values(stub, "brief") == {"brief": b"2"}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await channel_values(stub, "brief") and loop.time() < deadline:
        await asyncio.sleep(0.05)
    assert await channel_values(stub, "brief", "keep") == {"keep": b"1"}
    assert await channel_keys(stub) == ["keep"]
    deleted = await stub.ChannelDelete(result_store_pb2.ChannelDeleteRequest(run_id=RUN_1, keys=["brief"]))
    assert deleted.deleted == 0


async def test_setting_a_key_again_without_ttl_makes_it_permanent(stub, redis):
    await stub.ChannelSet(
        result_store_pb2.ChannelSetRequest(run_id=RUN_1, entries=[entry("k", b"1")], ttl_ms=60_000)
    )
    assert await redis.hexists(f"gf:chan:{{{RUN_1}}}:exp", "k")
    await stub.ChannelSet(result_store_pb2.ChannelSetRequest(run_id=RUN_1, entries=[entry("k", b"2")]))
    assert not await redis.hexists(f"gf:chan:{{{RUN_1}}}:exp", "k")
    assert await channel_values(stub, "k") == {"k": b"2"}
    assert 0 < await redis.ttl(f"gf:chan:{{{RUN_1}}}") <= 3600


async def test_oversized_channel_value_is_rejected_naming_the_key(stub):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ChannelSet(
            result_store_pb2.ChannelSetRequest(run_id=RUN_1, entries=[entry("big", b"x" * 5000)])
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'big'" in info.value.details()
    assert await channel_keys(stub) == []


async def test_health_is_serving_and_reflection_lists_the_service(redis_url):
    app = await start_app(redis_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", SERVICE_NAME):
                response = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert response.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            replies = [reply async for reply in reflection.ServerReflectionInfo(iter([request]))]
            assert SERVICE_NAME in {s.name for s in replies[0].list_services_response.service}
    finally:
        await app.stop(0)


async def test_calls_need_the_bearer_token_when_one_is_configured(redis, redis_url):
    app = await start_app(redis_url, auth_token="s3cret")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = result_store_pb2_grpc.ResultStoreStub(channel)
            request = result_store_pb2.ChannelKeysRequest(run_id=RUN_1)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ChannelKeys(request)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            response = await stub.ChannelKeys(request, metadata=[("authorization", "Bearer s3cret")])
            assert list(response.keys) == []
    finally:
        await app.stop(0)


async def test_keep_runs_alive_restarts_the_retention_of_every_key_of_the_run(stub, redis):
    await put(stub, result("a", 1, 1, run=RUN_1), result("a", 1, 1, run=RUN_2))
    json_one = common_pb2.Payload(content_type="application/json", data=b"1")
    await stub.ChannelSet(
        result_store_pb2.ChannelSetRequest(
            run_id=RUN_1, entries=[result_store_pb2.ChannelEntry(key="k", value=json_one)], ttl_ms=60_000
        )
    )
    await stub.PutCheckpoint(result_store_pb2.PutCheckpointRequest(run_id=RUN_1, node_id="a", value=json_one))
    present = [key for key in run_keys(RUN_1) if await redis.exists(key)]
    assert len(present) == 5  # results, their attempts, channel, channel expiries, checkpoints
    for key in [*present, *run_keys(RUN_2)]:
        await redis.expire(key, 5)  # as if written a retention period ago

    await stub.KeepRunsAlive(result_store_pb2.KeepRunsAliveRequest(run_ids=[RUN_1, RUN_4]))

    assert [3590 <= await redis.ttl(key) <= 3600 for key in present] == [True] * 5
    other_run = [await redis.ttl(key) for key in run_keys(RUN_2)[:2]]  # results and their attempts
    assert all(0 < ttl <= 5 for ttl in other_run), other_run  # not kept alive: untouched
    assert not await redis.exists(*run_keys(RUN_4))
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.KeepRunsAlive(result_store_pb2.KeepRunsAliveRequest(run_ids=[""]))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_result_the_scheduler_stored_inline_is_served_fenced_and_kept_alive(stub, redis):
    """The scheduler's apply_outcome.lua writes small results into this service's hashes (names from
    graflow_runtime.keys, NodeResult bytes, the attempt beside them, the scheduler's retention)."""
    inline = result("a", 2, '"inline"')
    await redis.hset(keys.results(RUN_1), "a", inline.SerializeToString())
    await redis.hset(keys.result_attempts(RUN_1), "a", 2)
    for key in (keys.results(RUN_1), keys.result_attempts(RUN_1)):
        await redis.expire(key, 5)

    assert await put(stub, result("a", 1, '"late"'), result("a", 2, '"again"')) == [STALE, DUPLICATE]
    assert await values(stub, RUN_1, "a") == {"a": b'"inline"'}
    await stub.KeepRunsAlive(result_store_pb2.KeepRunsAliveRequest(run_ids=[RUN_1]))
    hashes = (keys.results(RUN_1), keys.result_attempts(RUN_1))
    assert [3590 <= await redis.ttl(key) <= 3600 for key in hashes] == [True, True]


async def all_invalid(calls, problem: str, rule: str) -> None:
    """Each of ``(field, call)`` fails with INVALID_ARGUMENT naming its field, the problem and the rule."""
    for field, call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, info.value.details())
        assert info.value.details().startswith(f"{field}: {problem}")
        assert rule in info.value.details()


@pytest.mark.parametrize("run_id", ["r1", "0" * 25 + "\n", "0" * 25 + "I", "0" * 27, "{" + "0" * 24 + "}"])
async def test_a_malformed_run_id_is_invalid_argument_in_every_call_and_stores_nothing(stub, redis, run_id):
    value = common_pb2.Payload(content_type="application/json", data=b"1")
    calls = [
        ("results[0]", stub.PutResults(result_store_pb2.PutResultsRequest(results=[
            result_store_pb2.NodeResult(run_id=run_id, node_id="a", attempt=1, value=value)]))),
        ("run_id", stub.GetResults(result_store_pb2.GetResultsRequest(run_id=run_id, node_ids=["a"]))),
        ("run_id", stub.ChannelSet(result_store_pb2.ChannelSetRequest(
            run_id=run_id, entries=[result_store_pb2.ChannelEntry(key="k", value=value)]))),
        ("run_id", stub.ChannelGet(result_store_pb2.ChannelGetRequest(run_id=run_id, keys=["k"]))),
        ("run_id", stub.ChannelUpdate(result_store_pb2.ChannelUpdateRequest(
            run_id=run_id, key="k", operation=result_store_pb2.ChannelUpdateRequest.OPERATION_ADD,
            value=value))),
        ("run_id", stub.PutCheckpoint(result_store_pb2.PutCheckpointRequest(
            run_id=run_id, node_id="a", value=value))),
        ("run_ids[1]", stub.KeepRunsAlive(result_store_pb2.KeepRunsAliveRequest(run_ids=[RUN_1, run_id]))),
    ]
    await all_invalid(calls, "run_id ", "26 characters of Crockford base32")
    assert await redis.keys("*") == []


@pytest.mark.parametrize("key", ["", "a b", "k\n", "\x00", "k" * 257])
async def test_a_malformed_channel_key_is_invalid_argument_and_stores_nothing(stub, redis, key):
    value = common_pb2.Payload(content_type="application/json", data=b"1")
    calls = [
        ("entries[1].key", stub.ChannelSet(result_store_pb2.ChannelSetRequest(run_id=RUN_1, entries=[
            result_store_pb2.ChannelEntry(key="ok", value=value),
            result_store_pb2.ChannelEntry(key=key, value=value)]))),
        ("keys[0]", stub.ChannelGet(result_store_pb2.ChannelGetRequest(run_id=RUN_1, keys=[key]))),
        ("keys[0]", stub.ChannelDelete(result_store_pb2.ChannelDeleteRequest(run_id=RUN_1, keys=[key]))),
        ("key", stub.ChannelUpdate(result_store_pb2.ChannelUpdateRequest(
            run_id=RUN_1, key=key, operation=result_store_pb2.ChannelUpdateRequest.OPERATION_APPEND,
            value=value))),
    ]
    await all_invalid(calls, "channel key ", "1-256 characters without whitespace or control characters")
    assert await redis.keys("*") == []


async def test_a_stored_graph_expires_with_the_retention_and_each_put_or_keep_alive_restarts_it(stub, redis):
    digest = graph_hash(spec())
    key = f"gf:graph:{digest}"
    await stub.PutGraph(result_store_pb2.PutGraphRequest(graph_hash=digest, spec=spec()))
    assert 3590 <= await redis.ttl(key) <= 3600  # graphs used to stay for ever, one per shape
    await redis.expire(key, 5)
    await stub.PutGraph(result_store_pb2.PutGraphRequest(graph_hash=digest, spec=spec()))
    assert 3590 <= await redis.ttl(key) <= 3600
    await redis.expire(key, 5)
    await stub.KeepRunsAlive(result_store_pb2.KeepRunsAliveRequest(run_ids=[RUN_1], graph_hashes=[digest]))
    assert 3590 <= await redis.ttl(key) <= 3600
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.KeepRunsAlive(result_store_pb2.KeepRunsAliveRequest(graph_hashes=["not-a-hash\n"]))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "graph_hashes[0]" in bad.value.details() and "64 lowercase hex" in bad.value.details()
