"""End to end: transport security. The whole stack (services, a worker, the SDK) over TLS and mTLS
with certificates made at test time; clients that show no certificate, trust another CA or show a
certificate of another CA are refused; an API server on a non-loopback address without TLS or
credentials does not start, unless its ``INSECURE`` opt-out is set (then it warns at every start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from graflow import Client, workflow
from graflow.cli.testing.capture import Captured
from graflow.devstack import MODULES, PREFIXES, LocalStack, StackTls, child_pythonpath
from graflow.errors import ServiceUnavailableError
from graflow.operators import Operators
from graflow_runtime.local_redis import free_port
from graflow_runtime.testing.certs import CertificateAuthority, make_ca
from tests.e2e.conftest import module_stack
from tests.e2e.tasks import add_one, double, source


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def stranger_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return make_ca(tmp_path_factory.mktemp("stranger-ca"), "stranger-ca")


def stack_tls(ca: CertificateAuthority, *, client_auth: bool) -> StackTls:
    files = ca.issue("graflow-stack")
    return StackTls(ca.cert, files.cert, files.key, client_auth=client_auth)


@pytest.fixture(scope="module")
def mtls_stack(request: pytest.FixtureRequest, ca: CertificateAuthority) -> Iterator[LocalStack]:
    with module_stack(request, workers=1, tls=stack_tls(ca, client_auth=True)) as stack:
        yield stack


@pytest.fixture(scope="module")
def tls_stack(request: pytest.FixtureRequest, ca: CertificateAuthority) -> Iterator[LocalStack]:
    with module_stack(request, workers=1, tls=stack_tls(ca, client_auth=False)) as stack:
        yield stack


def run_sequence(client: Client) -> int:
    with workflow("tls-sequence") as wf:
        source(task_id="source", value=4) >> add_one >> double
    return client.submit(wf).result(timeout=60)


# A well-formed run id that no run has.
UNKNOWN_RUN = "0" * 26


def refused(client: Client) -> ServiceUnavailableError:
    """The error of a call of ``client`` to the scheduler, after checking that the result-store
    refuses it too: both at the handshake (UNAVAILABLE, naming the address)."""
    with client:
        with pytest.raises(ServiceUnavailableError) as result_store_error:
            client.channel_keys(UNKNOWN_RUN)
        assert client.result_store_address in str(result_store_error.value)
        with pytest.raises(ServiceUnavailableError) as error:
            client.list_runs()
    return error.value


# ---- mTLS ----
def test_a_run_completes_over_mtls_through_every_service_and_the_worker(mtls_stack: LocalStack) -> None:
    with mtls_stack.client(timeout=30) as client:
        assert run_sequence(client) == 10
    with mtls_stack.operators(timeout=30) as operators:  # the worker registered over mTLS
        assert [w.worker_id for w in operators.workers()] == ["dev-worker-0"]


def test_mtls_refuses_a_client_without_a_certificate(
    mtls_stack: LocalStack, ca: CertificateAuthority
) -> None:
    refused(Client(mtls_stack.scheduler_address, mtls_stack.result_store_address, tls_ca_file=str(ca.cert),
                   tls_cert_file="", tls_key_file=""))
    with Operators(mtls_stack.coordinator_address, tls_ca_file=str(ca.cert), tls_cert_file="",
                   tls_key_file="") as operators, pytest.raises(ServiceUnavailableError):
        operators.workers()


def test_mtls_refuses_a_client_certificate_signed_by_another_ca(
    mtls_stack: LocalStack, ca: CertificateAuthority, stranger_ca: CertificateAuthority
) -> None:
    stranger = stranger_ca.issue("stranger")
    client = Client(
        mtls_stack.scheduler_address,
        mtls_stack.result_store_address,
        tls_ca_file=str(ca.cert),
        tls_cert_file=str(stranger.cert),
        tls_key_file=str(stranger.key),
    )
    refused(client)


def test_mtls_refuses_a_plaintext_client(mtls_stack: LocalStack) -> None:
    plain = Client(mtls_stack.scheduler_address, mtls_stack.result_store_address, tls_ca_file="",
                   tls_cert_file="", tls_key_file="")
    refused(plain)


# ---- TLS without client certificates ----
def test_a_run_completes_over_tls_with_a_client_that_has_only_the_ca(
    tls_stack: LocalStack, ca: CertificateAuthority
) -> None:
    client = Client(tls_stack.scheduler_address, tls_stack.result_store_address, timeout=30,
                    tls_ca_file=str(ca.cert), tls_cert_file="", tls_key_file="")
    with client:
        assert run_sequence(client) == 10


def test_tls_refuses_a_client_trusting_another_ca(
    tls_stack: LocalStack, stranger_ca: CertificateAuthority
) -> None:
    error = refused(Client(tls_stack.scheduler_address, tls_stack.result_store_address,
                           tls_ca_file=str(stranger_ca.cert), tls_cert_file="", tls_key_file=""))
    assert tls_stack.scheduler_address in str(error)


def test_the_sdk_reads_its_tls_files_from_the_environment(
    tls_stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in tls_stack.client_env().items():
        monkeypatch.setenv(name, value)
    with Client(timeout=30) as client:
        assert client.list_runs() is not None


# ---- the CLI ----
@pytest.fixture
def no_client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("GRAFLOW_CLIENT_")]:
        monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_client_env")
def test_the_cli_talks_mtls_with_its_tls_options_and_says_so_in_one_line_without_them(
    mtls_stack: LocalStack, ca: CertificateAuthority
) -> None:
    client = ca.issue("cli")
    addresses = ["--scheduler", mtls_stack.scheduler_address, "--coordinator", mtls_stack.coordinator_address]
    tls = ["--tls-ca-file", str(ca.cert), "--tls-cert-file", str(client.cert),
           "--tls-key-file", str(client.key)]
    cli = Captured()
    assert cli(*addresses, *tls, "workers") == 0, cli.err
    assert "dev-worker-0" in cli.out
    without_certificate = Captured()
    assert without_certificate(*addresses, "--tls-ca-file", str(ca.cert), "runs") == 2
    assert mtls_stack.scheduler_address in without_certificate.err
    missing = Captured()
    assert missing(*addresses, "--tls-ca-file", "/nonexistent/ca.crt", "runs") == 2
    assert missing.err.strip().splitlines() == [
        "graflow: error: tls_ca_file=/nonexistent/ca.crt cannot be read: No such file or directory"
    ]


@pytest.mark.usefixtures("no_client_env")
def test_graflow_dev_runs_its_example_over_mtls_on_the_certificates_of_a_directory(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    stack = ca.issue("graflow-dev")
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    for source_file, name in ((ca.cert, "ca.crt"), (stack.cert, "tls.crt"), (stack.key, "tls.key")):
        (tls_dir / name).write_bytes(source_file.read_bytes())
    cli = Captured()
    assert cli("dev", "--workers", "1", "--any-ports", "--tls-dir", str(tls_dir), "--mtls") == 0, cli.err
    assert "SUCCEEDED" in cli.out
    empty = tmp_path / "empty"
    empty.mkdir()
    refused_dir = Captured()
    assert refused_dir("dev", "--any-ports", "--tls-dir", str(empty)) == 2
    assert f"TLS directory {empty} lacks {empty / 'ca.crt'}" in refused_dir.err


# ---- refusing to expose an unprotected API server ----
def service_env(service: str, **settings: str) -> dict[str, str]:
    prefix = PREFIXES[service]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFLOW_")}
    env.update({"PYTHONPATH": child_pythonpath(), f"{prefix}LOG_FORMAT": "json"})
    env.update({f"{prefix}{name.upper()}": value for name, value in settings.items()})
    return env


@pytest.mark.parametrize("service", ["scheduler", "coordinator", "result-store"])
@pytest.mark.parametrize("host", ["0.0.0.0", "[::]", "203.0.113.5"])
def test_an_api_server_on_a_non_loopback_address_without_tls_or_credentials_exits_2(
    service: str, host: str
) -> None:
    address = f"{host}:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", MODULES[service]],
        env=service_env(service, listen_address=address, redis_url="redis://127.0.0.1:1/0"),
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    prefix = PREFIXES[service]
    # The one plain line of a configuration error (the others are JSON log lines).
    [line] = [line for line in done.stderr.splitlines() if line.startswith(f"graflow-{service}: ")]
    assert line.startswith(f"graflow-{service}: refusing to serve on {address} without TLS or credentials")
    for variable in (f"{prefix}TLS_CERT_FILE", f"{prefix}AUTH_TOKEN", f"{prefix}INSECURE=true"):
        assert variable in line


def test_the_insecure_opt_out_serves_on_all_interfaces_and_warns_at_every_start(
    request: pytest.FixtureRequest,
) -> None:
    port = free_port()
    env = {"GRAFLOW_SCHEDULER_LISTEN_ADDRESS": f"0.0.0.0:{port}", "GRAFLOW_SCHEDULER_INSECURE": "true"}
    with module_stack(request, workers=0, ports={"scheduler": port}, env=env) as stack:
        with stack.client(timeout=30) as client:
            assert client.list_runs() is not None
        stack.restart("scheduler")
        with stack.client(timeout=30) as client:
            assert client.list_runs() is not None
        lines = [json.loads(line) for line in stack.log_path("scheduler").read_text().splitlines()
                 if line.startswith("{")]
    warnings = [line for line in lines if "insecure opt-out" in line.get("event", "")]
    assert len(warnings) == 2, warnings
    assert {(w["level"], w["address"], w["opt_out"]) for w in warnings} == {
        ("warning", f"0.0.0.0:{port}", "GRAFLOW_SCHEDULER_INSECURE=true")
    }


def test_a_bad_tls_file_stops_a_service_with_exit_2_naming_the_variable(tmp_path: Path) -> None:
    missing = tmp_path / "missing.crt"
    done = subprocess.run(
        [sys.executable, "-m", MODULES["result-store"]],
        env=service_env("result-store", listen_address=f"127.0.0.1:{free_port()}",
                        tls_cert_file=str(missing), tls_key_file=str(missing)),
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert f"GRAFLOW_RESULT_STORE_TLS_KEY_FILE={missing} cannot be read" in done.stderr

