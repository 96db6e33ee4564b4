"""The console in headless Chromium against a live stack (issue 11, section 4).

Each test does what a person does on the pages (the DOM contract of docs/console.md: ids and data
attributes) and checks the outcome both on the page and at the services: a workflow submitted
from its page turns SUCCEEDED node by node on the run page, live from the server-sent events (the
page is never reloaded); an approval answered on its form finishes the run; a run is canceled
from its page; a dead letter is replayed by an admin and leaves the list; and signed in with a
client credential, replaying or deleting a dead letter is refused by the coordinator (the console
calls with the person's own token) and changes nothing. Two more pages are kept for the docs: the
run page of a 20-node run with one failed node, and a feedback form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import redis

from graflow import Client, workflow
from graflow.devstack import LocalStack
from graflow.operators import Operators
from graflow_api.v1 import workflow_pb2
from graflow_runtime import keys
from graflow_runtime.access import Role
from graflow_runtime.signing import BusKeys, Kind
from tests.browser.browser import Browser
from tests.e2e.conftest import wait_for
from tests.e2e.tasks import add_one, ask, collect, cooperative_wait, double, fail_after, gated, source

DEMO = "browser-demo"
WIDE_NODES = 20


@pytest.fixture(scope="module")
def demo(client: Client) -> str:
    """A registered workflow whose first node waits for the test's gate, so the run page is open
    before anything succeeds; ``source`` takes the run's argument ``value``."""
    with workflow(DEMO) as wf:
        gated(task_id="gate") >> source(task_id="source") >> add_one >> double
    client.register_workflow(wf, description="gate >> source >> add_one >> double", defaults={"value": 1})
    return DEMO


def node_states(browser: Browser) -> dict[str, str]:
    """node id -> data-state of the run page's graph (read in the page: its events update it)."""
    return browser.script(
        "return Object.fromEntries([...document.querySelectorAll('svg#run-graph g.node')]"
        ".map(n => [n.dataset.nodeId, n.dataset.state]));"
    )


def run_status(browser: Browser) -> str:
    return browser.script("const s = document.querySelector('#run-status'); "
                          "return s ? s.dataset.status : '';")


def wait_run_status(browser: Browser, status: str) -> None:
    browser.wait(lambda: run_status(browser) == status, f"#run-status {status}")


def test_a_workflow_submitted_from_its_page_turns_succeeded_live_on_the_run_page(
    browser: Browser, stack: LocalStack, client: Client, fx: redis.Redis, demo: str
) -> None:
    browser.sign_in(stack.token_of(Role.CLIENT))
    browser.open("/workflows")
    browser.click(f"#workflows a[href$='/workflows/{demo}']")
    arguments = browser.find("#submit-form textarea[name=arguments]")
    assert json.loads(arguments.get_attribute("value")) == {"value": 1}  # the registered defaults
    arguments.clear()
    arguments.send_keys(json.dumps({"value": 5}))
    browser.click("#submit-run")
    browser.wait(lambda: browser.path.startswith("/runs/"), "the redirect to the new run's page")
    run_id = browser.path.removeprefix("/runs/").split("?")[0]

    # The scheduler learns of a task's outcome, not of its start: the gate stays READY while it runs.
    wait_for(lambda: fx.exists(f"started:{run_id}:gate:1"), what="the gate task to start")
    waiting = {"gate": "READY", "source": "PENDING", "add_one": "PENDING", "double": "PENDING"}
    browser.wait(lambda: node_states(browser) == waiting, f"the nodes {waiting}")
    assert run_status(browser) == "RUNNING"
    # A mark on this document: a reload (or a navigation) would lose it.
    browser.script("window.__sameDocument = true;")
    fx.set(f"gate:{run_id}:gate:1", 1)

    browser.wait(lambda: set(node_states(browser).values()) == {"SUCCEEDED"}, "every node SUCCEEDED")
    wait_run_status(browser, "SUCCEEDED")
    assert browser.script("return window.__sameDocument === true;"), "the page was reloaded"
    # The arguments typed in the form reached the run: (5 + 1) * 2.
    assert client.run(run_id).results(["double"]) == {"double": 12}


def open_feedback_form(browser: Browser, client: Client, run_id: str) -> str:
    """From the run page, follow the link of its waiting request; returns the request id."""
    wait_for(lambda: client.list_feedback(run_id), what="the run's feedback request")
    (request,) = client.list_feedback(run_id)
    browser.open(f"/runs/{run_id}")
    browser.click(f"#feedback a[href$='/feedback/{request.request_id}']")
    browser.find("#feedback-form")
    return request.request_id


def test_an_approval_answered_on_its_form_finishes_the_run(
    browser: Browser, stack: LocalStack, client: Client
) -> None:
    with workflow("browser-approval") as wf:
        ask(task_id="approve", kind="approval", prompt="Ship release 1.2 to production?") >> source
    run = client.submit(wf)
    browser.sign_in(stack.token_of(Role.CLIENT))
    open_feedback_form(browser, client, run.id)
    assert "Ship release 1.2 to production?" in browser.text("main")
    browser.find("#feedback-form [name=reason]").send_keys("checked in staging")
    browser.screenshot("feedback_form")
    browser.click("#feedback-approve")

    browser.wait(lambda: browser.path.startswith(f"/runs/{run.id}"), "the redirect to the run page")
    wait_run_status(browser, "SUCCEEDED")
    answer = run.results(["approve"])["approve"]
    assert answer["approved"] is True


def test_the_waiting_panel_and_the_header_follow_an_answer_given_elsewhere(
    browser: Browser, stack: LocalStack, client: Client
) -> None:
    with workflow("browser-approval-elsewhere") as wf:
        ask(task_id="approve", kind="approval", prompt="Answered from the CLI?") >> source
    run = client.submit(wf)
    wait_for(lambda: client.list_feedback(run.id), what="the run's feedback request")
    (request,) = client.list_feedback(run.id)
    browser.sign_in(stack.token_of(Role.CLIENT))
    browser.open(f"/runs/{run.id}")
    browser.find(f"#feedback a[href$='/feedback/{request.request_id}']")
    assert "ended" not in browser.text("#run-header")
    client.respond_feedback(run.id, request.request_id, approved=True)

    # The answer came from elsewhere: the page (not reloaded) drops the request and shows the end.
    wait_run_status(browser, "SUCCEEDED")
    browser.wait(lambda: "No feedback request waits" in browser.text("#feedback"), "the panel emptied")
    browser.wait(lambda: "ended" in browser.text("#run-header"), "the header's end time")


def test_a_run_is_canceled_from_its_page(
    browser: Browser, stack: LocalStack, client: Client, fx: redis.Redis
) -> None:
    with workflow("browser-long") as wf:
        wf.add(cooperative_wait(task_id="work", seconds=120))
    run = client.submit(wf)
    wait_for(lambda: fx.exists(f"running:{run.id}:work"), what="the long task to start")
    browser.sign_in(stack.token_of(Role.CLIENT))
    browser.open(f"/runs/{run.id}")
    wait_run_status(browser, "RUNNING")
    browser.click("#cancel-run")

    wait_run_status(browser, "CANCELED")
    browser.wait(lambda: node_states(browser) == {"work": "CANCELED"}, "the node CANCELED in the graph")
    assert run.status == "CANCELED"
    wait_for(lambda: fx.exists(f"observed:{run.id}:work"), what="the running task to see the cancel")


def test_a_run_too_large_to_draw_is_a_live_node_table_with_its_history_once(
    browser: Browser, stack: LocalStack, client: Client
) -> None:
    # 301 nodes on a queue no worker serves: past graph_layout.MAX_VERTICES, and nothing runs.
    spec = workflow_pb2.WorkflowSpec(
        name="browser-too-large",
        nodes=[workflow_pb2.NodeSpec(id=f"n{i}", task_type="idle", queue="nobody") for i in range(301)],
        edges=[workflow_pb2.EdgeSpec(from_id=f"n{i}", to_id=f"n{i + 1}") for i in range(300)],
    )
    run = client.submit(spec)
    browser.sign_in(stack.token_of(Role.CLIENT))
    browser.open(f"/runs/{run.id}")
    assert "301 nodes" in browser.text("#graph-note")
    browser.click("#run-graph tr.node[data-node-id=n0]")
    browser.wait(lambda: "n0" in browser.text("#node-details"), "the details of n0")
    browser.click("#cancel-run")
    wait_run_status(browser, "CANCELED")
    browser.wait(lambda: browser.script("return document.getElementById('run').dataset.live;") == "ended",
                 "the end of the live stream")
    # The page came with the history; the stream added only what came after it: no event twice.
    types = browser.script("return [...document.querySelectorAll('#events li.event')]"
                           ".map(e => e.dataset.type);")
    assert types.count("RUN_CREATED") == 1 and types.count("RUN_CANCELED") == 1, types
    browser.wait(lambda: browser.script(
        "const n = document.querySelector('#run-graph tr.node[data-node-id=n0]');"
        "return n ? n.dataset.state : '';") == "CANCELED", "n0 CANCELED in the node table")


@dataclass(frozen=True)
class DeadLetter:
    id: str
    raw: bytes


@pytest.fixture
def dead_letter(stack: LocalStack, fx: redis.Redis) -> DeadLetter:
    """A fresh dead letter, made as a worker makes one: an undecodable entry on the default queue,
    which the worker that reads it dead-letters (the reason names the problem)."""
    raw = f"not an envelope {fx.incr('browser:dead-letters')}".encode()
    bus = BusKeys.from_settings([stack.signing_key], "") if stack.signing_key else BusKeys()
    fx.xadd(keys.queue_stream("default"), {keys.ENVELOPE_FIELD: raw, **bus.sign_fields(Kind.ENVELOPE, raw)})
    with stack.operators() as ops:
        wait_for(lambda: letters_holding(ops, raw), what="the worker to dead-letter the bad entry")
        (letter_id,) = letters_holding(ops, raw)
    return DeadLetter(letter_id, raw)


def letters_holding(ops: Operators, raw: bytes) -> list[str]:
    return [letter.id for letter in ops.dead_letters(limit=0) if letter.raw == raw]


def test_an_admin_replays_a_dead_letter_and_it_leaves_the_list(
    browser: Browser, stack: LocalStack, dead_letter: DeadLetter
) -> None:
    browser.sign_in(stack.token_of(Role.ADMIN))
    browser.open("/dead-letters")
    browser.click(f"#dead-letters tr.dead-letter[data-id='{dead_letter.id}'] button.replay")

    browser.find("#flash.ok")
    assert dead_letter.id in browser.flash()
    browser.wait(lambda: not browser.exists(f"tr.dead-letter[data-id='{dead_letter.id}']"),
                 "the replayed dead letter to leave the list")
    # It went back on its queue as a new delivery, which the worker (still unable to decode it)
    # dead-letters again under a new id.
    with stack.operators() as ops:
        wait_for(lambda: letters_holding(ops, dead_letter.raw) not in ([], [dead_letter.id]),
                 what="the replayed entry to be delivered again")
        assert dead_letter.id not in letters_holding(ops, dead_letter.raw)


def test_a_client_credential_is_refused_replaying_or_deleting_a_dead_letter(
    browser: Browser, stack: LocalStack, dead_letter: DeadLetter
) -> None:
    """A client may not even list the dead letters; the page's by-id form still sends the actions,
    so the refusal shown must be the coordinator's, for that action."""
    browser.sign_in(stack.token_of(Role.CLIENT))
    for button, method in (("#by-id-replay", "ReplayDeadLetters"), ("#by-id-delete", "DeleteDeadLetters")):
        browser.open("/dead-letters")
        browser.find("#dead-letter-by-id input[name=id]").send_keys(dead_letter.id)
        browser.click(button)
        expected = f"role client may not call /graflow_api.v1.Coordinator/{method}; it is for: admin"
        browser.wait(lambda e=expected: e in browser.flash(), f"the refusal {expected!r}")
        assert browser.exists("#flash.error")
    with stack.operators() as ops:  # still there, untouched
        assert letters_holding(ops, dead_letter.raw) == [dead_letter.id]


def test_the_run_page_of_a_20_node_run_with_one_failed_node(
    browser: Browser, stack: LocalStack, client: Client
) -> None:
    """source, then nine branches add_one >> collect, and one node that fails once the nine
    branches succeeded: 19 SUCCEEDED, 1 FAILED."""
    branches = [f"c{i}" for i in range(1, 10)]
    with workflow("browser-twenty") as wf:
        root = source(task_id="source")
        for i in range(1, 10):
            root >> add_one(task_id=f"a{i}") >> collect(task_id=f"c{i}")
        root >> fail_after(task_id="breaks", others=branches, message="the disk is full")
    run = client.submit(wf)
    browser.sign_in(stack.token_of(Role.VIEWER))
    browser.open(f"/runs/{run.id}")
    wait_run_status(browser, "FAILED")
    final = {**{node: "SUCCEEDED" for node in wf.node_ids}, "breaks": "FAILED"}
    assert len(final) == WIDE_NODES
    browser.wait(lambda: node_states(browser) == final, "19 nodes SUCCEEDED and breaks FAILED")
    browser.click("svg#run-graph g.node[data-node-id=breaks]")
    browser.wait(lambda: "the disk is full" in browser.text("#node-details"),
                 "the failed node's error in #node-details")
    browser.screenshot("run_page_20_nodes_one_failed")
