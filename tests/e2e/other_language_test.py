"""End to end: a client in another language (Node.js) uses only the contracts in proto/: it submits,
answers the approval a task asks for, watches the run and reads its result; in plaintext, and over
mTLS with a CA and a client certificate (refused without the certificate)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from graflow.devstack import LocalStack, StackTls
from graflow_runtime.testing.certs import CertificateAuthority, make_ca
from tests.e2e.conftest import module_stack

ROOT = Path(__file__).resolve().parents[2]
CLIENT = Path(__file__).resolve().parent / "node_client"


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the example and its installed packages."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "this test needs Node.js and npm on PATH (.ci/run installs them)"
    directory = tmp_path_factory.mktemp("node_client")
    for name in ("package.json", "package-lock.json", "submit.js"):
        shutil.copy(CLIENT / name, directory / name)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=directory, check=True,
                   timeout=300, capture_output=True)
    return directory


def run_node_client(
    directory: Path, stack: LocalStack, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GRAFLOW_CLIENT_")}
    return subprocess.run(
        ["node", "submit.js", str(ROOT / "proto"), stack.scheduler_address, stack.result_store_address],
        cwd=directory, capture_output=True, text=True, timeout=60, env={**environ, **env},
    )


def assert_it_ran(done: subprocess.CompletedProcess[str], stack: LocalStack) -> None:
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["event"] == "TYPE_RUN_CREATED"
    assert {"answered": "approve.0.1", "state": "FEEDBACK_STATE_ANSWERED"} in lines
    assert lines[-1]["status"] == "RUN_STATUS_SUCCEEDED"
    assert lines[-1]["result"] == {"double": 42}
    with stack.client() as client:
        approval = client.run(lines[-1]["run_id"]).results(["approve"])["approve"]
    assert (approval["approved"], approval["by"]) == (True, "node-client")


def test_a_node_js_client_submits_answers_an_approval_and_reads_results(stack: LocalStack, node_client: Path):
    assert_it_ran(run_node_client(node_client, stack, {}), stack)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def mtls_stack(request: pytest.FixtureRequest, ca: CertificateAuthority) -> Iterator[LocalStack]:
    files = ca.issue("graflow-stack")
    tls = StackTls(ca.cert, files.cert, files.key, client_auth=True)
    with module_stack(request, workers=1, tls=tls) as stack:
        yield stack


def test_a_node_js_client_does_the_same_over_mtls_with_a_ca_and_a_client_certificate(
    mtls_stack: LocalStack, node_client: Path, ca: CertificateAuthority
):
    client = ca.issue("node-client")
    env = {
        "GRAFLOW_CLIENT_TLS_CA_FILE": str(ca.cert),
        "GRAFLOW_CLIENT_TLS_CERT_FILE": str(client.cert),
        "GRAFLOW_CLIENT_TLS_KEY_FILE": str(client.key),
    }
    assert_it_ran(run_node_client(node_client, mtls_stack, env), mtls_stack)


def test_a_node_js_client_without_a_client_certificate_is_refused_by_mtls(
    mtls_stack: LocalStack, node_client: Path, ca: CertificateAuthority
):
    done = run_node_client(node_client, mtls_stack, {"GRAFLOW_CLIENT_TLS_CA_FILE": str(ca.cert)})
    assert done.returncode != 0
    assert "UNAVAILABLE" in done.stderr
    assert done.stdout == ""
