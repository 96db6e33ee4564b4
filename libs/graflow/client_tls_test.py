"""The SDK's TLS files: parameters first, then GRAFLOW_CLIENT_TLS_*; a bad file fails the
constructor, naming the parameter or the variable that gave it (offline: no call is made)."""

from __future__ import annotations

from pathlib import Path

import pytest

from graflow import Client
from graflow.operators import Operators
from graflow_runtime.testing.certs import make_ca
from graflow_runtime.tls import TlsFileError


@pytest.fixture(autouse=True)
def no_client_tls_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CA", "CERT", "KEY"):
        monkeypatch.delenv(f"GRAFLOW_CLIENT_TLS_{name}_FILE", raising=False)


def test_a_missing_file_from_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFLOW_CLIENT_TLS_CA_FILE", "/nonexistent/ca.crt")
    with pytest.raises(TlsFileError, match="^GRAFLOW_CLIENT_TLS_CA_FILE=/nonexistent/ca.crt cannot be read"):
        Client()
    with pytest.raises(TlsFileError, match="^GRAFLOW_CLIENT_TLS_CA_FILE="):
        Operators()


def test_a_parameter_wins_over_the_environment_and_is_named_when_bad(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GRAFLOW_CLIENT_TLS_CA_FILE", "/nonexistent/ca.crt")
    ca = make_ca(tmp_path)
    assert Client(tls_ca_file=str(ca.cert)).scheduler_address  # the good parameter, not the variable
    unset_key = r"tls_key_file \(or GRAFLOW_CLIENT_TLS_KEY_FILE\)"
    together = rf"^tls_cert_file and {unset_key} go together: set {unset_key} too"
    with pytest.raises(TlsFileError, match=together):
        Client(tls_ca_file=str(ca.cert), tls_cert_file=str(ca.cert))


def test_no_ca_means_plaintext_and_reads_nothing() -> None:
    with Client() as client:
        assert client._scheduler.credentials is None
