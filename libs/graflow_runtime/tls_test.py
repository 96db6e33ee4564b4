"""TLS credentials from files (bad files fail with the variable's name), the refusal to expose an
API server unprotected, and a real TLS / mTLS server on port 0 called through real channels."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from structlog.testing import capture_logs

from graflow_runtime.errors import ConfigurationError
from graflow_runtime.grpc_client import open_channel
from graflow_runtime.grpc_server import ServerHandle, create_server
from graflow_runtime.settings import ServiceSettings, settings_config
from graflow_runtime.testing.certs import CertFiles, CertificateAuthority, make_ca
from graflow_runtime.tls import (
    Exposure,
    TlsFileError,
    TlsFiles,
    api_server_credentials,
    check_exposure,
    files_of,
    is_loopback,
)


class ExampleSettings(ServiceSettings):
    model_config = settings_config("GRAFLOW_EXAMPLE_")


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return make_ca(tmp_path / "ca")


@pytest.fixture
def server_cert(ca: CertificateAuthority) -> CertFiles:
    return ca.issue("server")


def settings(**values: object) -> ExampleSettings:
    return ExampleSettings(**values)  # type: ignore[arg-type]


# ---- files ----
def test_a_missing_file_names_its_variable_and_path(tmp_path: Path, ca: CertificateAuthority) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(TlsFileError, match=rf"GRAFLOW_EXAMPLE_TLS_CA_FILE={missing} cannot be read"):
        files_of(settings(tls_ca_file=str(missing))).channel_credentials()


def test_an_unreadable_file_names_its_variable(tmp_path: Path, server_cert: CertFiles) -> None:
    directory = tmp_path / "a-directory.key"
    directory.mkdir()
    s = settings(tls_cert_file=str(server_cert.cert), tls_key_file=str(directory))
    with pytest.raises(TlsFileError, match="GRAFLOW_EXAMPLE_TLS_KEY_FILE=.* cannot be read"):
        files_of(s).server_credentials()


def test_a_file_without_pem_content_says_what_it_should_hold(tmp_path: Path, server_cert: CertFiles) -> None:
    garbage = tmp_path / "garbage.crt"
    garbage.write_bytes(b"not a certificate")
    s = settings(tls_cert_file=str(garbage), tls_key_file=str(server_cert.key))
    with pytest.raises(TlsFileError, match="GRAFLOW_EXAMPLE_TLS_CERT_FILE=.* holds no PEM certificate"):
        files_of(s).server_credentials()
    # A certificate where the key should be is caught too.
    s = settings(tls_cert_file=str(server_cert.cert), tls_key_file=str(server_cert.cert))
    with pytest.raises(TlsFileError, match="GRAFLOW_EXAMPLE_TLS_KEY_FILE=.* holds no PEM private key"):
        files_of(s).server_credentials()


def test_an_encrypted_key_is_refused_saying_why(tmp_path: Path, server_cert: CertFiles) -> None:
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIH\n")
    s = settings(tls_cert_file=str(server_cert.cert), tls_key_file=str(encrypted))
    reason = "GRAFLOW_EXAMPLE_TLS_KEY_FILE=.* is encrypted: gRPC takes no passphrase"
    with pytest.raises(TlsFileError, match=reason):
        files_of(s).server_credentials()


@pytest.mark.parametrize("given", ["cert", "key"])
def test_a_certificate_without_its_key_or_the_reverse_is_refused(
    given: str, server_cert: CertFiles, ca: CertificateAuthority
) -> None:
    s = settings(**{f"tls_{given}_file": str(getattr(server_cert, given)), "tls_ca_file": str(ca.cert)})
    pair = "GRAFLOW_EXAMPLE_TLS_CERT_FILE and GRAFLOW_EXAMPLE_TLS_KEY_FILE go together"
    with pytest.raises(TlsFileError, match=pair):
        files_of(s).server_credentials()
    with pytest.raises(TlsFileError, match="go together"):
        files_of(s).channel_credentials()


def test_client_auth_needs_a_certificate_and_a_ca(server_cert: CertFiles) -> None:
    with pytest.raises(TlsFileError, match="GRAFLOW_EXAMPLE_TLS_CLIENT_AUTH needs TLS"):
        api_server_credentials(settings(tls_client_auth=True), "127.0.0.1:0")
    s = settings(tls_client_auth=True, tls_cert_file=str(server_cert.cert), tls_key_file=str(server_cert.key))
    needs_ca = "GRAFLOW_EXAMPLE_TLS_CLIENT_AUTH needs GRAFLOW_EXAMPLE_TLS_CA_FILE:"
    with pytest.raises(TlsFileError, match=needs_ca):
        api_server_credentials(s, "127.0.0.1:0")


def test_nothing_set_is_plaintext_both_ways() -> None:
    files = TlsFiles()
    assert files.channel_credentials() is None
    assert files.server_credentials() is None


# ---- exposure ----
@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.9.10:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("unix:/tmp/graflow.sock", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (":50051", False),
        ("10.0.0.7:50051", False),
        ("203.0.113.5:50051", False),
        ("scheduler:50051", False),
        ("localhost.example.com:50051", False),
    ],
)
def test_only_loopback_addresses_count_as_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_an_unprotected_api_server_on_a_public_address_is_refused_naming_what_to_set() -> None:
    with pytest.raises(ConfigurationError) as refused:
        api_server_credentials(settings(), "0.0.0.0:50051")
    message = str(refused.value)
    assert "refusing to serve on 0.0.0.0:50051 without TLS or credentials" in message
    for variable in ("GRAFLOW_EXAMPLE_TLS_CERT_FILE", "GRAFLOW_EXAMPLE_TLS_KEY_FILE",
                     "GRAFLOW_EXAMPLE_AUTH_TOKEN", "GRAFLOW_EXAMPLE_INSECURE=true"):
        assert variable in message


def test_tls_or_a_token_or_loopback_is_enough(server_cert: CertFiles) -> None:
    tls = settings(tls_cert_file=str(server_cert.cert), tls_key_file=str(server_cert.key))
    assert api_server_credentials(tls, "0.0.0.0:50051") is not None
    assert api_server_credentials(settings(auth_token="t"), "0.0.0.0:50051") is None
    assert api_server_credentials(settings(), "127.0.0.1:50051") is None


def test_the_insecure_opt_out_starts_with_a_warning_every_time() -> None:
    for _ in range(2):
        with capture_logs() as logs:
            assert api_server_credentials(settings(insecure=True), "[::]:50051") is None
        warnings = [entry for entry in logs if entry["log_level"] == "warning"]
        assert len(warnings) == 1
        assert warnings[0]["address"] == "[::]:50051"
        assert warnings[0]["opt_out"] == "GRAFLOW_EXAMPLE_INSECURE=true"
        assert "insecure opt-out" in warnings[0]["event"]


def test_a_protected_or_loopback_server_logs_no_warning() -> None:
    with capture_logs() as logs:
        check_exposure(Exposure("127.0.0.1:1", False, False, True, "t", "c", "i"))
        check_exposure(Exposure("0.0.0.0:1", False, True, True, "t", "c", "i"))
    assert logs == []


# ---- real TLS ----
async def serve(credentials: grpc.ServerCredentials | None) -> AsyncIterator[ServerHandle]:
    handle = create_server("127.0.0.1:0", [], name="probe", server_credentials=credentials)
    await handle.start()
    try:
        yield handle
    finally:
        await handle.stop(0)


async def health_status(handle: ServerHandle, files: TlsFiles) -> str:
    channel = open_channel(f"127.0.0.1:{handle.port}", credentials=files.channel_credentials())
    async with channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


@pytest.fixture
async def tls_server(server_cert: CertFiles) -> AsyncIterator[ServerHandle]:
    files = TlsFiles(cert_file=str(server_cert.cert), key_file=str(server_cert.key))
    async for handle in serve(files.server_credentials()):
        yield handle


@pytest.fixture
async def mtls_server(server_cert: CertFiles, ca: CertificateAuthority) -> AsyncIterator[ServerHandle]:
    files = TlsFiles(str(ca.cert), str(server_cert.cert), str(server_cert.key))
    async for handle in serve(files.server_credentials(client_auth=True)):
        yield handle


async def test_a_tls_server_answers_a_client_that_trusts_its_ca(
    tls_server: ServerHandle, ca: CertificateAuthority
) -> None:
    assert await health_status(tls_server, TlsFiles(ca_file=str(ca.cert))) == "SERVING"


async def test_a_tls_server_refuses_a_plaintext_client_and_a_client_trusting_another_ca(
    tls_server: ServerHandle, tmp_path: Path
) -> None:
    other = make_ca(tmp_path / "other", "other-ca")
    for files in (TlsFiles(), TlsFiles(ca_file=str(other.cert))):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_status(tls_server, files)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_answers_a_client_certificate_signed_by_the_ca(
    mtls_server: ServerHandle, ca: CertificateAuthority
) -> None:
    client = ca.issue("client")
    files = TlsFiles(str(ca.cert), str(client.cert), str(client.key))
    assert await health_status(mtls_server, files) == "SERVING"


async def test_mtls_refuses_a_client_without_a_certificate_or_with_one_of_another_ca(
    mtls_server: ServerHandle, ca: CertificateAuthority, tmp_path: Path
) -> None:
    stranger = make_ca(tmp_path / "other", "other-ca").issue("stranger")
    for files in (
        TlsFiles(ca_file=str(ca.cert)),
        TlsFiles(str(ca.cert), str(stranger.cert), str(stranger.key)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_status(mtls_server, files)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
