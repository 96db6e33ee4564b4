"""The run page against a live stack: the graph as SVG with node states, the live event stream,
node details, and cancel refused to a viewer with the service's message."""

from __future__ import annotations

import json
import re
import time

import pytest
from fastapi.testclient import TestClient

from graflow.devstack import LocalStack
from graflow.errors import RunFailedError
from graflow_api.v1 import workflow_pb2
from graflow_examples.approval import release
from graflow_examples.etl import etl
from graflow_runtime.access import Role
from graflow_runtime.runids import new_run_id
from tests.console.conftest import SAME_ORIGIN, sign_in
from tests.console.tasks import failing, family


@pytest.fixture(scope="module")
def etl_run(stack: LocalStack) -> str:
    run = stack.client().submit(etl)
    run.result(timeout=60)
    return run.id


def nodes_of(html: str) -> dict[str, str]:
    node = r'<g class="node[^"]*" id="node-[^"]+" data-node-id="([^"]+)" data-state="([A-Z]+)"'
    return dict(re.findall(node, html))


def sse_events(text: str) -> list[tuple[str, str, str]]:
    """(id, event, data) of each server-sent event."""
    found = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        found.append((fields.get("id", ""), fields.get("event", ""), fields.get("data", "")))
    return found


def test_the_run_page_draws_every_node_with_its_state_and_the_edges(console: TestClient, stack: LocalStack,
                                                                    etl_run: str):
    sign_in(console, stack, Role.VIEWER)
    page = console.get(f"/runs/{etl_run}")
    assert page.status_code == 200
    assert 'id="run-status" class="status SUCCEEDED" data-status="SUCCEEDED"' in page.text
    assert '<svg id="run-graph"' in page.text
    nodes = nodes_of(page.text)
    assert set(nodes) >= {"fetch", "clean", "enrich", "report"}
    assert all(state == "SUCCEEDED" for state in nodes.values()), nodes
    edges = set(re.findall(r'data-from="([^"]+)" data-to="([^"]+)"', page.text))
    assert ("fetch", "clean") in edges or any(src == "fetch" for src, _ in edges), edges
    assert any(dst == "report" for _, dst in edges), edges
    assert 'id="cancel-form"' not in page.text  # an ended run cannot be canceled
    assert 'src="/static/run.js"' in page.text


def test_the_event_stream_replays_the_history_ends_and_resumes_after_a_cursor(
        console: TestClient, stack: LocalStack, etl_run: str):
    sign_in(console, stack, Role.VIEWER)
    with console.stream("GET", f"/runs/{etl_run}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.read().decode())
    assert events[-1][1] == "end"
    run_events = [(i, json.loads(data)) for i, kind, data in events if kind == "run-event"]
    types = [data["type"] for _, data in run_events]
    assert types[0] == "RUN_CREATED" and types[-1] == "RUN_SUCCEEDED", types
    succeeded = [data for _, data in run_events if data["type"] == "NODE_SUCCEEDED"]
    assert {d["node_id"] for d in succeeded} >= {"fetch", "report"}
    assert all(d["node_state"] == "SUCCEEDED" for d in succeeded)
    assert run_events[-1][1]["run_status"] == "SUCCEEDED"
    # A reconnect with Last-Event-ID gets only what came after it.
    middle = run_events[len(run_events) // 2][0]
    with console.stream("GET", f"/runs/{etl_run}/events", headers={"last-event-id": middle}) as response:
        resumed = [e for e in sse_events(response.read().decode()) if e[1] == "run-event"]
    assert [i for i, _, _ in resumed] == [i for i, _ in run_events[len(run_events) // 2 + 1:]]


def page_events(html: str) -> list[str]:
    """The types of the ``#events`` items the page came with."""
    return re.findall(r'<li class="event [A-Z_]+" data-type="([A-Z_]+)">', html)


def test_the_page_comes_with_the_history_and_the_cursor_its_stream_resumes_after(
        console: TestClient, stack: LocalStack, etl_run: str):
    sign_in(console, stack, Role.VIEWER)
    with console.stream("GET", f"/runs/{etl_run}/events") as response:
        streamed = [e for e in sse_events(response.read().decode()) if e[1] == "run-event"]
    page = console.get(f"/runs/{etl_run}")
    # The whole history, in order, rendered with the page (an ended run is read to its end).
    assert page_events(page.text) == [json.loads(data)["type"] for _, _, data in streamed]
    cursor = re.search(r'data-cursor="([^"]*)"', page.text)
    assert cursor and cursor.group(1) == streamed[-1][0]
    assert "data-as-of-ms" not in page.text  # no comparing the clocks of scheduler replicas
    # The page's script starts its stream after that cursor: nothing is repeated.
    with console.stream("GET", f"/runs/{etl_run}/events?cursor={cursor.group(1)}") as response:
        after = sse_events(response.read().decode())
    assert [kind for _, kind, _ in after] == ["end"]


def test_a_live_run_page_has_its_history_up_to_the_wait_and_details_of_the_waiting_node(
        console: TestClient, stack: LocalStack):
    run = stack.client().submit(release)  # waits for an approval: WatchRun does not end
    sign_in(console, stack, Role.VIEWER)
    deadline = time.monotonic() + 60
    while "NODE_WAITING" not in page_events((page := console.get(f"/runs/{run.id}")).text):
        assert time.monotonic() < deadline, page.text[-2000:]
        time.sleep(0.2)
    assert page_events(page.text)[0] == "RUN_CREATED"
    assert re.search(r'data-cursor="[^"]+"', page.text)
    details = console.get(f"/runs/{run.id}/nodes/deploy")
    assert "NODE_WAITING" in details.text and "dev-worker-0" in details.text
    run.cancel("done")


def test_a_run_too_large_to_draw_shows_a_node_table_saying_why(console: TestClient, stack: LocalStack):
    # 301 nodes on a queue no worker serves: the run stays live, nothing runs.
    spec = workflow_pb2.WorkflowSpec(
        name="too-large",
        nodes=[workflow_pb2.NodeSpec(id=f"n{i}", task_type="idle", queue="nobody") for i in range(301)],
        edges=[workflow_pb2.EdgeSpec(from_id=f"n{i}", to_id=f"n{i + 1}") for i in range(300)],
    )
    run = stack.client().submit(spec)
    sign_in(console, stack, Role.VIEWER)
    page = console.get(f"/runs/{run.id}")
    assert page.status_code == 200
    assert 'id="graph-note"' in page.text and "301 nodes" in page.text
    assert '<table id="run-graph"' in page.text and '<svg id="run-graph"' not in page.text
    assert 'id="node-n300" data-node-id="n300" data-state="PENDING"' in page.text
    fragment = console.get(f"/runs/{run.id}/graph")
    assert fragment.headers["content-type"].startswith("text/html")
    assert fragment.text.count('<tr class="node"') == 301
    run.cancel("done")


def test_node_details_show_the_result_worker_and_timings(
        console: TestClient, stack: LocalStack, etl_run: str):
    sign_in(console, stack, Role.VIEWER)
    details = console.get(f"/runs/{etl_run}/nodes/fetch")
    assert details.status_code == 200
    assert "SUCCEEDED" in details.text
    assert 'class="result"' in details.text
    assert "dev-worker-0" in details.text
    assert "NODE_SUCCEEDED" in details.text
    assert console.get(f"/runs/{etl_run}/nodes/nope").status_code == 404


def test_a_failed_node_shows_its_error_and_traceback(console: TestClient, stack: LocalStack):
    run = stack.client().submit(failing)
    with pytest.raises(RunFailedError):
        run.result(timeout=60)
    sign_in(console, stack, Role.VIEWER)
    page = console.get(f"/runs/{run.id}")
    assert nodes_of(page.text)["fail_loudly"] == "FAILED"
    assert "this node fails on purpose" in page.text
    details = console.get(f"/runs/{run.id}/nodes/fail_loudly")
    assert "ValueError" in details.text and 'class="traceback"' in details.text


def test_a_parent_run_links_its_child_and_the_child_its_parent(console: TestClient, stack: LocalStack):
    run = stack.client().submit(family)
    assert run.result(timeout=60) == 14
    sign_in(console, stack, Role.VIEWER)
    parent = console.get(f"/runs/{run.id}")
    children = re.findall(r'<a class="mono child-run" href="/runs/([^"]+)">', parent.text)
    assert len(children) == 1, parent.text
    child = console.get(f"/runs/{children[0]}")
    parent_link = f'<p>Parent: <a class="mono" href="/runs/{run.id}">{run.id}</a> (node start_child)</p>'
    assert parent_link in child.text
    assert nodes_of(child.text) == {"child_value": "SUCCEEDED"}


def test_a_viewer_is_refused_cancel_with_the_services_message_and_a_client_cancels(
        console: TestClient, stack: LocalStack):
    run = stack.client().submit(release)  # waits for an approval: still going
    csrf = sign_in(console, stack, Role.VIEWER)
    page = console.get(f"/runs/{run.id}")
    assert 'id="cancel-form"' in page.text
    refused = console.post(f"/runs/{run.id}/cancel", data={"csrf_token": csrf}, headers=SAME_ORIGIN)
    assert refused.status_code == 403
    assert '<div id="flash" class="error"' in refused.text
    assert "viewer" in refused.text and "CancelRun" in refused.text, refused.text
    no_csrf = console.post(f"/runs/{run.id}/cancel", data={}, headers=SAME_ORIGIN)
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text

    csrf = sign_in(console, stack, Role.CLIENT)
    done = console.post(f"/runs/{run.id}/cancel", data={"csrf_token": csrf, "reason": "not today"},
                        headers=SAME_ORIGIN, follow_redirects=True)
    assert done.status_code == 200
    assert 'data-status="CANCELED"' in done.text
    assert '<div id="flash" class="ok"' in done.text


def test_an_unknown_run_is_a_404_page_and_a_malformed_id_a_400(console: TestClient, stack: LocalStack):
    sign_in(console, stack, Role.VIEWER)
    page = console.get(f"/runs/{new_run_id()}")
    assert page.status_code == 404 and '<div id="flash" class="error"' in page.text
    assert console.get("/runs/no-such-run").status_code == 400
