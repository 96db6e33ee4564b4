"""The SDK client against a real result-store process (runs need the whole stack: devstack_test)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from graflow import Client, ServiceCallError, ServiceUnavailableError, payload
from graflow.devstack import ServiceProcess
from graflow.run import parse_status, sink_node_ids
from graflow_api.v1 import result_store_pb2, result_store_pb2_grpc, workflow_pb2
from graflow_runtime.local_redis import free_port

TOKEN = "t0ken"


@pytest.fixture(scope="module")
def result_store(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real result-store process requiring a bearer token; yields its address."""
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "GRAFLOW_RESULT_STORE_REDIS_URL": redis_url,
        "GRAFLOW_RESULT_STORE_LISTEN_ADDRESS": address,
        "GRAFLOW_RESULT_STORE_AUTH_TOKEN": TOKEN,
        "GRAFLOW_RESULT_STORE_LOG_FORMAT": "json",
    }
    log_path = Path(tmp_path_factory.mktemp("logs")) / "result-store.log"
    process = ServiceProcess("result-store", "graflow_result_store", env, log_path, address)
    process.spawn()
    try:
        process.wait_serving(60)
        yield address
    finally:
        process.stop(grace_s=10)


@pytest.fixture
def store_stub(result_store: str) -> Iterator[result_store_pb2_grpc.ResultStoreStub]:
    with grpc.insecure_channel(result_store) as channel:
        yield result_store_pb2_grpc.ResultStoreStub(channel)


AUTH = [("authorization", f"Bearer {TOKEN}")]
RUN = "01HZY0000000000000000CHAN1"
RUN_RESULTS = "01HZY00000000000000RESVWTS"
RUN_EMPTY = "01HZY0000000000000000EMPTY"


def put_result(stub, run_id: str, node_id: str, value: object) -> None:
    result = result_store_pb2.NodeResult(
        run_id=run_id, node_id=node_id, attempt=1, value=payload.encode(value)
    )
    stub.PutResults(result_store_pb2.PutResultsRequest(results=[result]), metadata=AUTH, timeout=10)


def test_results_of_a_run_are_read_and_decoded_in_one_call(result_store, store_stub):
    put_result(store_stub, RUN_RESULTS, "a", {"x": [1, 2]})
    put_result(store_stub, RUN_RESULTS, "b", b"\x00raw")
    with Client("127.0.0.1:1", result_store, auth_token=TOKEN) as client:
        assert client.run(RUN_RESULTS).results(["a", "b", "missing"]) == {
            "a": {"x": [1, 2]},
            "b": b"\x00raw",
        }


def test_run_channel_reads_values_and_keys(result_store, store_stub):
    entries = [
        result_store_pb2.ChannelEntry(key=k, value=payload.encode(v)) for k, v in {"n": 3, "s": "hi"}.items()
    ]
    store_stub.ChannelSet(
        result_store_pb2.ChannelSetRequest(run_id=RUN, entries=entries), metadata=AUTH
    )
    with Client("127.0.0.1:1", result_store, auth_token=TOKEN) as client:
        channel = client.run(RUN).channel()
        assert channel.keys() == ["n", "s"]
        assert channel.get("n") == 3
        assert channel.get("absent", "default") == "default"
        assert channel.get_many(["s", "absent"]) == {"s": "hi"}
        assert channel.exists("s") and not channel.exists("absent")


def test_graphs_are_read_back_by_hash(result_store, store_stub):
    from graflow_runtime.graphs import graph_hash

    spec = workflow_pb2.WorkflowSpec(name="g", nodes=[workflow_pb2.NodeSpec(id="a", task_type="a")])
    store_stub.PutGraph(
        result_store_pb2.PutGraphRequest(graph_hash=graph_hash(spec), spec=spec), metadata=AUTH
    )
    with Client("127.0.0.1:1", result_store, auth_token=TOKEN) as client:
        assert client.get_graph(graph_hash(spec)) == spec


def test_missing_token_is_reported_with_a_hint(result_store, monkeypatch):
    monkeypatch.delenv("GRAFLOW_CLIENT_AUTH_TOKEN", raising=False)
    with Client("127.0.0.1:1", result_store) as client, pytest.raises(ServiceCallError) as info:
        client.channel_keys("r")
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "GRAFLOW_CLIENT_AUTH_TOKEN" in str(info.value)


def test_token_comes_from_the_environment(result_store, monkeypatch):
    monkeypatch.setenv("GRAFLOW_CLIENT_AUTH_TOKEN", TOKEN)
    with Client("127.0.0.1:1", result_store) as client:
        assert client.channel_keys(RUN_EMPTY) == []


def test_unreachable_scheduler_names_its_address_and_how_to_start_one():
    address = f"127.0.0.1:{free_port()}"
    with Client(address, timeout=5) as client, pytest.raises(ServiceUnavailableError) as info:
        client.get_run("r")
    assert f"cannot reach the scheduler at {address}: is it running?" in str(info.value)
    assert "graflow dev --keep" in str(info.value)


def test_addresses_default_to_the_environment_then_to_loopback(monkeypatch):
    monkeypatch.setenv("GRAFLOW_CLIENT_SCHEDULER_ADDRESS", "sched:1")
    monkeypatch.delenv("GRAFLOW_CLIENT_RESULT_STORE_ADDRESS", raising=False)
    client = Client()
    assert (client.scheduler_address, client.result_store_address) == ("sched:1", "127.0.0.1:50053")
    assert Client("explicit:2").scheduler_address == "explicit:2"


def test_submit_refuses_what_is_not_a_workflow():
    with Client("127.0.0.1:1") as client, pytest.raises(TypeError, match="Workflow or a WorkflowSpec"):
        client.submit({"nodes": []})  # type: ignore[arg-type]


def test_status_names_parse_in_any_spelling():
    from graflow_api.v1 import common_pb2

    assert parse_status("failed") == parse_status("RUN_STATUS_FAILED") == common_pb2.RUN_STATUS_FAILED
    assert parse_status(None) == common_pb2.RUN_STATUS_UNSPECIFIED
    with pytest.raises(ValueError, match="use one of running, succeeded"):
        parse_status("exploded")


def test_sinks_of_a_graph_are_tasks_nothing_depends_on():
    spec = workflow_pb2.WorkflowSpec(
        nodes=[workflow_pb2.NodeSpec(id=i, task_type="t") for i in ("a", "b", "c", "d", "e")],
        groups=[
            workflow_pb2.GroupSpec(id="g", member_ids=["b", "c"]),
            workflow_pb2.GroupSpec(id="h", member_ids=["e"]),
        ],
        edges=[workflow_pb2.EdgeSpec(from_id="a", to_id="g"), workflow_pb2.EdgeSpec(from_id="g", to_id="d")],
    )
    assert sink_node_ids(spec) == ["d", "e"]
