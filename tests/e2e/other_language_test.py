"""End to end: a client in another language (Node.js) uses only the contracts in proto/: it submits,
answers the approval a task asks for, watches the run and reads its result."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from graflow.devstack import LocalStack

ROOT = Path(__file__).resolve().parents[2]
CLIENT = Path(__file__).resolve().parent / "node_client"


def test_a_node_js_client_submits_answers_an_approval_and_reads_results(stack: LocalStack, tmp_path: Path):
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "this test needs Node.js and npm on PATH (.ci/run installs them)"
    for name in ("package.json", "package-lock.json", "submit.js"):
        shutil.copy(CLIENT / name, tmp_path / name)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=tmp_path, check=True,
                   timeout=300, capture_output=True)
    done = subprocess.run(
        [node, "submit.js", str(ROOT / "proto"), stack.scheduler_address, stack.result_store_address],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["event"] == "TYPE_RUN_CREATED"
    assert {"answered": "approve.0.1", "state": "FEEDBACK_STATE_ANSWERED"} in lines
    assert lines[-1]["status"] == "RUN_STATUS_SUCCEEDED"
    assert lines[-1]["result"] == {"double": 42}
    with stack.client() as client:
        approval = client.run(lines[-1]["run_id"]).results(["approve"])["approve"]
    assert (approval["approved"], approval["by"]) == (True, "node-client")
