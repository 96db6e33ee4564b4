"""What the CLI computes without a stack: node arguments given at submit time, the run graph's
drawings, watch's progress counts, the version, shell completion."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from graflow.cli import Output, run
from graflow.cli.base import UsageError
from graflow.cli.graph import mermaid, run_graph, tree
from graflow.cli.progress import RunProgress
from graflow.cli.workflows import load_workflow, parse_node_args, with_node_args
from graflow.run import RunEvent, RunInfo
from graflow_api.v1 import common_pb2, workflow_pb2
from graflow_runtime.version import __version__


def _args(spec: workflow_pb2.WorkflowSpec) -> dict[str, dict]:
    return {node.id: json.loads(node.args_json or b"{}") for node in spec.nodes}


# ---- node arguments ----
def test_arg_values_are_json_else_strings_and_replace_bound_arguments():
    slow = load_workflow("graflow_examples.resilience:slow")  # binds nap(seconds=3.0)
    args = parse_node_args(["nap.seconds=0.5", "nap.label=a b", "nap.tags=[1, 2]"], None)
    assert _args(with_node_args(slow, args))["nap"] == {"seconds": 0.5, "label": "a b", "tags": [1, 2]}
    assert _args(slow.spec())["nap"] == {"seconds": 3.0}  # the workflow itself is unchanged


def test_args_json_gives_every_node_its_arguments_and_arg_overrides_it():
    args = parse_node_args(["fetch.limit=2"], '{"fetch": {"limit": 1, "day": "mon"}, "report": {"x": null}}')
    assert args == {"fetch": {"limit": 2, "day": "mon"}, "report": {"x": None}}


def test_node_ids_may_hold_dots_the_parameter_follows_the_last_one():
    assert parse_node_args(["load.eu.region=eu-1"], None) == {"load.eu": {"region": "eu-1"}}


@pytest.mark.parametrize(
    ("pairs", "args_json", "message"),
    [
        (["fetch"], None, "'fetch' is not NODE.PARAM=VALUE"),
        (["limit=3"], None, "'limit=3' is not NODE.PARAM=VALUE"),
        ([], "{nope", "--args-json is not JSON"),
        ([], '{"fetch": 3}', "--args-json must be an object of objects"),
    ],
)
def test_malformed_arguments_are_usage_errors(pairs, args_json, message):
    with pytest.raises(UsageError, match=message):
        parse_node_args(pairs, args_json)


def test_an_argument_for_a_node_the_workflow_lacks_names_it_and_submits_nothing():
    out, err = _streams()
    code = run(["--scheduler", "127.0.0.1:1", "submit", "graflow_examples.etl:etl", "--arg", "fecth.x=1"],
               Output(out, err))
    assert code == 2
    assert "workflow 'etl' has no node 'fecth' (its nodes: clean, enrich, fetch, report)" in err.getvalue()


# ---- the run graph ----
def _etl_run() -> tuple[RunInfo, workflow_pb2.WorkflowSpec]:
    spec = load_workflow("graflow_examples.etl:etl").spec()
    states = {"fetch": "SUCCEEDED", "clean": "FAILED", "enrich": "SUCCEEDED", "group_1": "FAILED",
              "report": "SKIPPED", "retry_clean": "PENDING"}
    info = RunInfo(run_id="r1", workflow_name="etl", status=common_pb2.RUN_STATUS_FAILED, nodes=[
        {"node_id": n, "state": common_pb2.NodeState.Value(f"NODE_STATE_{s}"),
         "added_by": "clean" if n == "retry_clean" else ""}
        for n, s in states.items()
    ])
    return info, spec


def test_mermaid_has_a_node_per_task_a_subgraph_per_group_and_a_class_per_state():
    text = mermaid(run_graph(*_etl_run()))
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    assert "  classDef failed fill:#fee2e2,stroke:#dc2626" in lines
    ids = {line.split("[")[0].split()[-1]: line for line in lines if '["' in line}
    by_name = {line.split('"')[1].split(" · ")[0]: node_id for node_id, line in ids.items()}
    assert ids[by_name["fetch"]].strip() == f'{by_name["fetch"]}["fetch · SUCCEEDED"]'
    assert f'  subgraph {by_name["group_1"]}["group_1 · FAILED"]' in lines
    assert f'    {by_name["clean"]}["clean · FAILED"]' in lines  # inside the group's subgraph
    assert f'  {by_name["fetch"]} --> {by_name["group_1"]}' in lines
    assert f'  {by_name["group_1"]} --> {by_name["report"]}' in lines
    assert f'  {by_name["clean"]} -.->|added| {by_name["retry_clean"]}' in lines
    assert f'  class {by_name["report"]} skipped' in lines


def test_the_tree_starts_at_the_roots_and_nests_group_members_and_added_nodes():
    out, _ = _streams()
    Output(out).render(tree(run_graph(*_etl_run()), "run r1"))
    assert out.getvalue().splitlines() == [
        "run r1",
        "└── fetch  SUCCEEDED",
        "    └── group_1  FAILED  (group)",
        "        ├── clean  FAILED",
        "        │   └── retry_clean  PENDING",
        "        ├── enrich  SUCCEEDED",
        "        └── report  SKIPPED",
    ]


# ---- watch's progress ----
def test_progress_counts_nodes_by_their_latest_event():
    progress = RunProgress(["a", "b", "c", "d"])
    for kind, node in [
        (RunEvent.TYPE_NODE_READY, "a"), (RunEvent.TYPE_NODE_SUCCEEDED, "a"), (RunEvent.TYPE_NODE_READY, "b"),
        (RunEvent.TYPE_NODE_FAILED, "b"), (RunEvent.TYPE_NODE_READY, "c"), (RunEvent.TYPE_NODE_WAITING, "d"),
        (RunEvent.TYPE_NODE_ADDED, "e"), (RunEvent.TYPE_RUN_PAUSED, ""),
    ]:
        progress.apply(RunEvent(type=kind, node_id=node))
    assert progress.summary() == "1/5 done  1 failed  1 waiting  1 running"


# ---- version and completion ----
def test_version_prints_the_one_version():
    out, _ = _streams()
    assert run(["--version"], Output(out)) == 0
    assert out.getvalue() == f"graflow {__version__}\n"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_the_shells_script(shell):
    out, _ = _streams()
    assert run(["completion", shell], Output(out)) == 0
    assert "_GRAFLOW_COMPLETE" in out.getvalue()


def test_the_completion_script_completes_commands_and_options():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
           "_GRAFLOW_COMPLETE": "bash_complete", "COMP_WORDS": "graflow dead", "COMP_CWORD": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "graflow.cli"], env=env, capture_output=True, text=True, timeout=60
    )
    assert "plain,dead-letters" in done.stdout.splitlines(), done.stdout + done.stderr


def _streams() -> tuple[io.StringIO, io.StringIO]:
    return io.StringIO(), io.StringIO()
