"""The run list and the registered workflows' pages against a live stack: filters, paging, live
counts, submitting a registered workflow by name with arguments."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from fastapi.testclient import TestClient

from graflow.devstack import LocalStack
from graflow_api.v1 import scheduler_pb2, scheduler_pb2_grpc
from graflow_examples.etl import etl
from graflow_runtime.access import Role
from tests.console.conftest import SAME_ORIGIN, sign_in


@pytest.fixture(scope="module")
def labelled_runs(stack: LocalStack) -> list[str]:
    client = stack.client()
    teams = ["red", "blue"] * 3
    runs = [client.submit(etl, labels={"team": team, "batch": "list"}) for team in teams]
    for run in runs:
        run.result(timeout=60)
    return [run.id for run in runs]


@pytest.fixture(scope="module")
def scheduler(stack: LocalStack) -> Iterator[scheduler_pb2_grpc.SchedulerStub]:
    with grpc.insecure_channel(stack.scheduler_address) as channel:
        yield scheduler_pb2_grpc.SchedulerStub(channel)


def row_ids(html: str) -> list[str]:
    return re.findall(r'<tr class="run-row" data-run-id="([^"]+)" data-status="[A-Z]+"', html)


def test_the_list_filters_by_status_workflow_and_label(console: TestClient, stack: LocalStack,
                                                        labelled_runs: list[str]):
    sign_in(console, stack, Role.VIEWER)
    page = console.get("/runs")
    assert page.status_code == 200 and 'id="run-filters"' in page.text and 'id="run-counts"' in page.text
    assert set(labelled_runs) <= set(row_ids(page.text))
    blue = console.get("/runs", params={"label": "team=blue, batch=list", "workflow": "etl",
                                        "status": "SUCCEEDED"})
    assert sorted(row_ids(blue.text)) == sorted(labelled_runs[1::2])
    assert row_ids(console.get("/runs", params={"workflow": "no-such-workflow"}).text) == []
    assert row_ids(console.get("/runs", params={"status": "FAILED", "label": "batch=list"}).text) == []


def test_the_list_filters_by_creation_time(console: TestClient, stack: LocalStack, labelled_runs: list[str]):
    sign_in(console, stack, Role.VIEWER)
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    past = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert row_ids(console.get("/runs", params={"created_after": future}).text) == []
    later = row_ids(console.get("/runs", params={"created_after": past, "label": "batch=list"}).text)
    assert sorted(later) == sorted(labelled_runs)
    assert row_ids(console.get("/runs", params={"created_before": past}).text) == []
    bad = console.get("/runs", params={"created_after": "yesterday"})
    assert bad.status_code == 400 and "created after" in bad.text


def test_the_list_pages_with_the_next_page_link(
        console: TestClient, stack: LocalStack, labelled_runs: list[str]):
    sign_in(console, stack, Role.VIEWER)
    seen: list[str] = []
    url = "/runs?label=batch%3Dlist"
    for _ in range(20):
        page = console.get(url)
        seen.extend(row_ids(page.text))
        found = re.search(r'<a id="next-page" href="([^"]+)"', page.text)
        if not found:
            break
        url = found.group(1).replace("&amp;", "&")
    assert sorted(seen) == sorted(labelled_runs)


def test_a_bad_filter_is_a_400_naming_it(console: TestClient, stack: LocalStack):
    sign_in(console, stack, Role.VIEWER)
    assert console.get("/runs", params={"status": "SLEEPING"}).status_code == 400
    bad_label = console.get("/runs", params={"label": "no-equals-sign"})
    assert bad_label.status_code == 400 and "key=value" in bad_label.text
    # The error is said above the filter form, which keeps what was typed; the list stays.
    page = bad_label.text
    assert page.index('id="flash"') < page.index('id="run-filters"') < page.index('id="runs"')
    assert 'name="label" value="no-equals-sign"' in page


def test_the_status_filter_takes_any_case(
    console: TestClient, stack: LocalStack, labelled_runs: list[str]
):
    sign_in(console, stack, Role.VIEWER)
    page = console.get("/runs", params={"status": "succeeded"})
    assert page.status_code == 200, page.text
    assert '<option value="SUCCEEDED" selected>' in page.text
    statuses = set(re.findall(r'class="run-row" data-run-id="[^"]+" data-status="(\w+)"', page.text))
    assert statuses == {"SUCCEEDED"}, statuses


def test_live_counts_by_status(console: TestClient, stack: LocalStack, labelled_runs: list[str]):
    sign_in(console, stack, Role.VIEWER)
    counts = console.get("/runs/counts")
    assert counts.status_code == 200
    link = r'data-status="SUCCEEDED" href="/runs\?status=SUCCEEDED">succeeded <strong>(\d+)</strong>'
    succeeded = re.search(link, counts.text)
    assert succeeded and int(succeeded.group(1)) >= len(labelled_runs), counts.text
    # Counts of all runs (filters do not apply to them); each status links to its filtered list.
    assert "all runs <strong>" in counts.text


def test_a_registered_workflow_is_submitted_by_name_with_arguments(
        console: TestClient, stack: LocalStack, scheduler: scheduler_pb2_grpc.SchedulerStub):
    token = [("authorization", f"Bearer {stack.token_of(Role.CLIENT)}")]
    scheduler.PutWorkflow(scheduler_pb2.PutWorkflowRequest(
        name="etl-console", spec=etl.spec(), description="the ETL example",
        default_arguments_json=b'{"source": "demo"}'), metadata=token)
    csrf = sign_in(console, stack, Role.CLIENT)
    listing = console.get("/workflows")
    assert 'id="workflows"' in listing.text and 'href="/workflows/etl-console"' in listing.text
    form = console.get("/workflows/etl-console")
    assert 'id="submit-form"' in form.text and "&#34;source&#34;: &#34;demo&#34;" in form.text
    bad = console.post("/workflows/etl-console/runs", data={"csrf_token": csrf, "arguments": "[1]"},
                       headers=SAME_ORIGIN)
    assert bad.status_code == 400 and "JSON object" in bad.text
    key = re.search(r'name="idempotency_key" value="([^"]+)"', form.text)
    assert key, "the form carries no idempotency key"
    fields = {"csrf_token": csrf, "arguments": '{"source": "console"}', "labels": "via=console",
              "idempotency_key": key.group(1)}
    submitted = console.post("/workflows/etl-console/runs", follow_redirects=False, headers=SAME_ORIGIN,
                             data=fields)
    assert submitted.status_code == 303
    run_id = submitted.headers["location"].removeprefix("/runs/")
    assert stack.client().get_run(run_id).labels == {"via": "console"}
    # A double click (the same form posted twice) is one run.
    again = console.post("/workflows/etl-console/runs", follow_redirects=False, headers=SAME_ORIGIN,
                         data=fields)
    assert again.headers["location"] == submitted.headers["location"]
    # Each render of the form has its own key.
    other = re.search(r'name="idempotency_key" value="([^"]+)"', console.get("/workflows/etl-console").text)
    assert other and other.group(1) != key.group(1)


def test_a_viewer_may_not_submit(console: TestClient, stack: LocalStack,
                                 scheduler: scheduler_pb2_grpc.SchedulerStub):
    token = [("authorization", f"Bearer {stack.token_of(Role.CLIENT)}")]
    scheduler.PutWorkflow(scheduler_pb2.PutWorkflowRequest(name="etl-viewer", spec=etl.spec()),
                          metadata=token)
    csrf = sign_in(console, stack, Role.VIEWER)
    refused = console.post("/workflows/etl-viewer/runs", data={"csrf_token": csrf, "arguments": "{}"},
                           headers=SAME_ORIGIN)
    assert refused.status_code == 403 and '<div id="flash" class="error"' in refused.text
