"""The console's scheduler calls (issue 11): the workflow registry, submits by name with arguments
as channel values, ListRuns' filters and CountRuns; on the real server with a real Redis."""

import json

import grpc
import pytest

from graflow_api.v1 import common_pb2, scheduler_pb2
from graflow_runtime import keys
from graflow_runtime.errors import ResourceExhausted

from graflow_scheduler.api.servicer_test import ETL, submit
from graflow_scheduler.state.workflows import WorkflowRegistry
from graflow_scheduler.testing.specs import spec

RUNNING, CANCELED = common_pb2.RUN_STATUS_RUNNING, common_pb2.RUN_STATUS_CANCELED


async def put(client, name="etl", workflow=ETL, defaults=b"", **fields):
    return await client.PutWorkflow(
        scheduler_pb2.PutWorkflowRequest(name=name, spec=workflow, default_arguments_json=defaults, **fields)
    )


async def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code()


async def channel_values(redis, run_id: str) -> dict[str, object]:
    stored = await redis.hgetall(keys.channel(run_id))
    payloads = {k.decode(): common_pb2.Payload.FromString(v) for k, v in stored.items()}
    assert {p.content_type for p in payloads.values()} <= {"application/json"}
    return {key: json.loads(p.data) for key, p in payloads.items()}


async def test_a_registered_workflow_is_got_listed_versioned_and_deleted(client):
    first = await put(client, description="nightly", defaults=b'{"day": "mon"}')
    again = await put(client, description="nightly, v2")

    assert (first.version, again.version) == (1, 2)
    got = await client.GetWorkflow(scheduler_pb2.GetWorkflowRequest(name="etl"))
    assert (got.version, got.description, got.spec.name, len(got.spec.nodes)) == (2, "nightly, v2", "etl", 4)
    assert got.graph_hash and got.updated_at_ms > 0
    (listed,) = (await client.ListWorkflows(scheduler_pb2.ListWorkflowsRequest())).workflows
    assert (listed.name, listed.version, listed.graph_hash) == ("etl", 2, got.graph_hash)
    assert not listed.spec.nodes
    await client.DeleteWorkflow(scheduler_pb2.DeleteWorkflowRequest(name="etl"))
    got_deleted = client.GetWorkflow(scheduler_pb2.GetWorkflowRequest(name="etl"))
    assert await code_of(got_deleted) == grpc.StatusCode.NOT_FOUND
    deleted_twice = client.DeleteWorkflow(scheduler_pb2.DeleteWorkflowRequest(name="etl"))
    assert await code_of(deleted_twice) == grpc.StatusCode.NOT_FOUND
    assert (await put(client)).version == 1


async def test_the_registered_spec_takes_the_registered_name(client):
    await put(client, name="etl-copy")
    got = await client.GetWorkflow(scheduler_pb2.GetWorkflowRequest(name="etl-copy"))
    assert got.spec.name == "etl-copy"


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"workflow": spec(["a", "b"], ["a>b", "b>a"])}, "cycle"),
        ({"name": "no spaces"}, "workflow name"),
        ({"name": "."}, "only of dots"),
        ({"name": ".."}, "only of dots"),
        ({"defaults": b"[1, 2]"}, "default_arguments_json"),
        ({"defaults": b"{nope"}, "default_arguments_json"),
    ],
)
async def test_an_invalid_registration_is_invalid_argument_and_stores_nothing(client, fields, fragment):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await put(client, **fields)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (info.value.details() or "")
    assert not (await client.ListWorkflows(scheduler_pb2.ListWorkflowsRequest())).workflows


async def test_registrations_beyond_the_limit_are_refused_but_a_registered_name_is_replaced(redis):
    registry = WorkflowRegistry(redis, max_workflows=2)
    for name in ("a", "b"):
        await registry.put(scheduler_pb2.RegisteredWorkflow(name=name, spec=ETL))
    with pytest.raises(ResourceExhausted, match="2 workflows"):
        await registry.put(scheduler_pb2.RegisteredWorkflow(name="c", spec=ETL))
    assert (await registry.put(scheduler_pb2.RegisteredWorkflow(name="b", spec=ETL))).version == 2
    assert [w.name for w in await registry.list()] == ["a", "b"]


async def test_a_submit_by_name_runs_the_registered_spec_with_arguments_over_the_defaults(client, redis):
    await put(client, defaults=b'{"day": "mon", "limit": 10}')

    response = await client.SubmitRun(
        scheduler_pb2.SubmitRunRequest(workflow="etl", arguments_json=b'{"limit": 20, "tags": ["a"]}')
    )

    run = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=response.run_id))
    assert (run.workflow_name, len(run.nodes)) == ("etl", 5)  # 4 tasks and a group
    assert await channel_values(redis, response.run_id) == {"day": "mon", "limit": 20, "tags": ["a"]}
    assert await redis.ttl(keys.channel(response.run_id)) > 0


async def test_an_idempotent_repeat_of_a_submit_by_name_keeps_the_first_arguments(client, redis):
    await put(client)
    request = scheduler_pb2.SubmitRunRequest(workflow="etl", idempotency_key="k1", arguments_json=b'{"n": 1}')
    first = await client.SubmitRun(request)
    request.arguments_json = b'{"n": 2}'
    second = await client.SubmitRun(request)

    assert first.created and not second.created and second.run_id == first.run_id
    assert await channel_values(redis, first.run_id) == {"n": 1}


async def test_a_submit_with_a_spec_takes_arguments_too(client, redis):
    response = await submit(client, arguments_json=b'{"x": 1.5}')
    assert await channel_values(redis, response.run_id) == {"x": 1.5}


@pytest.mark.parametrize(
    ("request_fields", "code"),
    [
        ({"workflow": "missing"}, grpc.StatusCode.NOT_FOUND),
        ({}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"workflow": "etl", "spec": ETL}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"workflow": "etl", "arguments_json": b"[1]"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"workflow": "etl", "arguments_json": b'{"bad key!": 1}'}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_a_bad_submit_by_name_creates_no_run(client, request_fields, code):
    await put(client)
    assert await code_of(client.SubmitRun(scheduler_pb2.SubmitRunRequest(**request_fields))) == code
    assert not (await client.ListRuns(scheduler_pb2.ListRunsRequest())).runs


async def list_ids(client, **fields) -> list[str]:
    """Every run the filters list, following the page tokens."""
    ids, token = [], ""
    while True:
        page = await client.ListRuns(scheduler_pb2.ListRunsRequest(page_token=token, **fields))
        ids += [run.run_id for run in page.runs]
        token = page.next_page_token
        if not token:
            return ids


async def test_runs_are_listed_by_workflow_name_labels_and_time_across_pages(client):
    etl = [(await submit(client, labels={"team": "a", "env": "prod"})).run_id for _ in range(3)]
    other = [(await submit(client, spec(["x"], name="other"), labels={"team": "a"})).run_id for _ in range(2)]
    runs = {
        run.run_id: run.created_at_ms for run in (await client.ListRuns(scheduler_pb2.ListRunsRequest())).runs
    }

    assert await list_ids(client, workflow_name="etl", limit=1) == etl[::-1]
    assert await list_ids(client, labels={"team": "a"}, limit=2) == (etl + other)[::-1]
    assert await list_ids(client, labels={"team": "a", "env": "prod"}) == etl[::-1]
    assert await list_ids(client, labels={"team": "b"}) == []
    middle = runs[etl[2]]
    window = await list_ids(client, created_after_ms=middle, created_before_ms=runs[other[1]] + 1)
    assert window == [r for r in (etl + other)[::-1] if middle <= runs[r]]
    assert await list_ids(client, created_before_ms=runs[etl[0]]) == []


async def test_listing_by_status_uses_the_status_index_and_follows_changes(client):
    runs = [(await submit(client)).run_id for _ in range(3)]
    await client.CancelRun(scheduler_pb2.CancelRunRequest(run_id=runs[1], reason="test"))

    assert await list_ids(client, status=CANCELED) == [runs[1]]
    assert await list_ids(client, status=RUNNING, limit=1) == [runs[2], runs[0]]


async def test_a_time_window_that_ends_before_it_starts_is_invalid_argument(client):
    call = client.ListRuns(scheduler_pb2.ListRunsRequest(created_after_ms=2000, created_before_ms=1000))
    assert await code_of(call) == grpc.StatusCode.INVALID_ARGUMENT


async def test_runs_are_counted_by_status(client):
    assert (await client.CountRuns(scheduler_pb2.CountRunsRequest())).total == 0
    runs = [(await submit(client)).run_id for _ in range(3)]
    await client.CancelRun(scheduler_pb2.CancelRunRequest(run_id=runs[0], reason="test"))

    counted = await client.CountRuns(scheduler_pb2.CountRunsRequest())

    assert counted.total == 3
    assert {c.status: c.count for c in counted.counts} == {RUNNING: 2, CANCELED: 1}
