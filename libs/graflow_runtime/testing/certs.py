"""TLS certificates made at test time (no key is ever committed).

``make_ca(directory, name)`` writes a self-signed CA; ``ca.issue(name, ...)`` writes a leaf
certificate signed by it, usable as a server certificate (its SANs cover ``localhost``,
``127.0.0.1`` and ``::1``) and as a client certificate whose identity is its common name. Keys are
EC P-256, so a whole set is made in milliseconds.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_LIFETIME = datetime.timedelta(days=2)
_LOOPBACK_NAMES: tuple[x509.GeneralName, ...] = (
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
)


@dataclass(frozen=True)
class CertFiles:
    """PEM files of one certificate and its key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class CertificateAuthority:
    directory: Path
    files: CertFiles
    _key: ec.EllipticCurvePrivateKey
    _cert: x509.Certificate

    @property
    def cert(self) -> Path:
        return self.files.cert

    def issue(self, common_name: str, *, dns_names: tuple[str, ...] = ()) -> CertFiles:
        """A leaf certificate for ``common_name``, valid for TLS servers and clients on loopback
        (and ``dns_names``)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names = [*_LOOPBACK_NAMES, *(x509.DNSName(name) for name in dns_names)]
        builder = (
            _builder(common_name, key, issuer=self._cert.subject)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        return _write(self.directory, common_name, builder.sign(self._key, hashes.SHA256()), key)


def make_ca(directory: Path, name: str = "graflow-test-ca") -> CertificateAuthority:
    """A new self-signed CA whose files are written into ``directory`` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(name, key, issuer=None)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(directory, _write(directory, name, cert, key), key, cert)


def _builder(
    common_name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None
) -> x509.CertificateBuilder:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _LIFETIME)
    )


def _write(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertFiles:
    files = CertFiles(cert=directory / f"{name}.crt", key=directory / f"{name}.key")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    files.key.chmod(0o600)
    return files
