"""Transport security of gRPC: TLS and mTLS credentials from PEM files, and the refusal to expose an
API server unprotected.

One set of files serves a process both ways: its server presents ``cert``/``key`` (and, with
client authentication, accepts only clients whose certificate the CA signed); its channels to other
services use TLS as soon as a CA is given, verify the server against that CA, and present
``cert``/``key`` as client certificate when set. The files are read once, when the process starts:
a missing, unreadable or non-PEM file is a :class:`TlsFileError` naming the variable (or parameter)
that gave it, which stops a service with exit code 2.

No third-party import besides grpc and structlog: the SDK (:mod:`graflow._transport`) uses this
module too.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import structlog

from graflow_runtime.errors import ConfigurationError

log = structlog.get_logger(__name__)

_CERTIFICATE_MARK = b"-----BEGIN CERTIFICATE-----"
_KEY_MARKS = (b"-----BEGIN PRIVATE KEY-----", b"-----BEGIN EC PRIVATE KEY-----",
              b"-----BEGIN RSA PRIVATE KEY-----")


class TlsSettings(Protocol):
    """The settings of :class:`graflow_runtime.settings.ServiceSettings` this module reads (a protocol:
    importing the settings would load pydantic into the SDK)."""

    model_config: Any
    tls_cert_file: str
    tls_key_file: str
    tls_ca_file: str
    tls_client_auth: bool
    insecure: bool
    auth_token: str


class TlsFileError(ConfigurationError, ValueError):
    """A TLS file is missing, unreadable, not PEM, or given without its pair."""


@dataclass(frozen=True)
class TlsFiles:
    """Paths of a process's PEM files ("" = not set) and how the user named each one (its
    environment variable, or the parameter), so that every error says what to fix."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    ca_name: str = "tls_ca_file"
    cert_name: str = "tls_cert_file"
    key_name: str = "tls_key_file"

    @property
    def has_certificate(self) -> bool:
        return bool(self.cert_file or self.key_file)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials of a client channel when a CA is set (None: plaintext): the server must
        show a certificate signed by the CA; the process's certificate, when set, is sent as client
        certificate (mTLS)."""
        if not self.ca_file:
            if self.has_certificate:
                self._certificate_pair()  # still checked: a typo must not pass silently
            return None
        root = _read(self.ca_file, self.ca_name, "certificate")
        if not self.has_certificate:
            return grpc.ssl_channel_credentials(root_certificates=root)
        key, cert = self._certificate_pair()
        return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)

    def server_credentials(self, *, client_auth: bool = False, client_auth_name: str = "tls_client_auth"
                           ) -> grpc.ServerCredentials | None:
        """TLS credentials of a server when a certificate is set (None: plaintext). With
        ``client_auth`` a client must show a certificate signed by the CA (mTLS); without it, a CA
        still lets clients that have a certificate present it (verified against the CA)."""
        if not self.has_certificate:
            if client_auth:
                raise TlsFileError(
                    f"{client_auth_name} needs TLS: set {self.cert_name} and {self.key_name} (the server's "
                    f"certificate and key) and {self.ca_name} (the CA of its clients)"
                )
            return None
        key, cert = self._certificate_pair()
        if client_auth and not self.ca_file:
            raise TlsFileError(
                f"{client_auth_name} needs {self.ca_name}: the CA that signs the clients' certificates"
            )
        root = _read(self.ca_file, self.ca_name, "certificate") if self.ca_file else None
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=root, require_client_auth=client_auth
        )

    def _certificate_pair(self) -> tuple[bytes, bytes]:
        if not (self.cert_file and self.key_file):
            missing = self.key_name if self.cert_file else self.cert_name
            raise TlsFileError(
                f"{self.cert_name} and {self.key_name} go together: set {missing} too (a certificate "
                "and its private key, PEM)"
            )
        return _read(self.key_file, self.key_name, "private key"), _read(
            self.cert_file, self.cert_name, "certificate"
        )


def _read(path: str, name: str, kind: str) -> bytes:
    """The PEM bytes of ``path``, or a :class:`TlsFileError` naming ``name``."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise TlsFileError(f"{name}={path} cannot be read: {exc.strerror or exc}") from None
    marks = (_CERTIFICATE_MARK,) if kind == "certificate" else _KEY_MARKS
    if kind == "private key" and b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data:
        raise TlsFileError(f"{name}={path} is encrypted: gRPC takes no passphrase, give the key unencrypted")
    if not any(mark in data for mark in marks):
        raise TlsFileError(f"{name}={path} holds no PEM {kind} (expected a '{marks[0].decode()}' block)")
    return data


def is_loopback(address: str) -> bool:
    """Whether a listen address ("host:port", "[v6]:port", "unix:path") is reachable from this
    machine only: ``localhost``, 127.0.0.0/8, ``::1`` or a Unix socket. ``0.0.0.0``, ``::``, an
    empty host, any other IP or host name is exposed."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rsplit(":", 1)[0] if ":" in address else address
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve to anything
        return False


@dataclass(frozen=True)
class Exposure:
    """What guards an API server, to decide whether it may listen on ``address``."""

    address: str
    tls: bool
    credentials: bool
    insecure: bool
    # The variables that protect it or opt out, named in the refusal.
    tls_variables: str
    credentials_variable: str
    insecure_variable: str


def check_exposure(exposure: Exposure) -> None:
    """Refuse (:class:`ConfigurationError`, exit code 2) an API server on a non-loopback address with
    neither TLS nor credentials, unless the operator opted out; with the opt-out, log a warning (at
    every start, since every start calls this). Listeners that serve only health checks or
    metrics do not call it."""
    if exposure.tls or exposure.credentials or is_loopback(exposure.address):
        return
    if exposure.insecure:
        log.warning(
            "serving without TLS or credentials on a non-loopback address (insecure opt-out): anyone "
            "who reaches it can call every RPC",
            address=exposure.address,
            opt_out=f"{exposure.insecure_variable}=true",
        )
        return
    raise ConfigurationError(
        f"refusing to serve on {exposure.address} without TLS or credentials: anyone who reaches it could "
        f"call every RPC. Set {exposure.tls_variables} (TLS) and/or {exposure.credentials_variable} "
        f"(bearer tokens), listen on 127.0.0.1, or set {exposure.insecure_variable}=true to run "
        "unprotected on a trusted network"
    )


def _variable(settings: TlsSettings, name: str) -> str:
    return str(settings.model_config.get("env_prefix", "")) + name


def files_of(settings: TlsSettings) -> TlsFiles:
    """A service's TLS files, named by their variables (``GRAFLOW_<SVC>_TLS_*_FILE``)."""
    return TlsFiles(
        settings.tls_ca_file,
        settings.tls_cert_file,
        settings.tls_key_file,
        ca_name=_variable(settings, "TLS_CA_FILE"),
        cert_name=_variable(settings, "TLS_CERT_FILE"),
        key_name=_variable(settings, "TLS_KEY_FILE"),
    )


def channel_credentials(settings: TlsSettings) -> grpc.ChannelCredentials | None:
    """Credentials of a service's channels to other services (None: plaintext), see
    :meth:`TlsFiles.channel_credentials`."""
    return files_of(settings).channel_credentials()


def api_server_credentials(settings: TlsSettings, address: str) -> grpc.ServerCredentials | None:
    """Credentials of a service's API server listening on ``address`` (None: plaintext), after
    :func:`check_exposure`: raises :class:`ConfigurationError` for bad files or an unprotected
    non-loopback address."""
    credentials = files_of(settings).server_credentials(
        client_auth=settings.tls_client_auth, client_auth_name=_variable(settings, "TLS_CLIENT_AUTH")
    )
    check_exposure(
        Exposure(
            address=address,
            tls=credentials is not None,
            credentials=bool(settings.auth_token),
            insecure=settings.insecure,
            tls_variables=f"{_variable(settings, 'TLS_CERT_FILE')} and {_variable(settings, 'TLS_KEY_FILE')}",
            credentials_variable=_variable(settings, "AUTH_TOKEN"),
            insecure_variable=_variable(settings, "INSECURE"),
        )
    )
    return credentials
