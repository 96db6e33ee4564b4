"""Where each service listens by default (every default works on one machine), and how an address
setting names one or several replicas of a service.

The services' settings and the SDK's clients both start from these. Plain Python, no third-party
imports: the SDK's client path imports it without pulling in the services' settings (pydantic).

An address setting (``GRAFLOW_WORKER_SCHEDULER_ADDRESS``, ``GRAFLOW_CLIENT_SCHEDULER_ADDRESS``,
``graflow --scheduler``...) is one of:

- ``host:port``: passed to gRPC as it is, which reads it as ``dns:///host:port``: one server, or
  every address a name resolves to;
- ``host:port,host:port,...``: replicas of one service; every entry is resolved once, when the
  channel opens, and the channel balances calls over them (docs/architecture.md, "Replicas");
- a gRPC target with a scheme, passed as it is: ``dns:///name:port`` (gRPC's own resolver, which
  re-resolves the name and balances over every address it has: a Kubernetes headless Service),
  ``ipv4:a:p,b:p``, ``unix:/path``...
"""

from __future__ import annotations

import ipaddress
import socket

DEFAULT_SCHEDULER_ADDRESS = "127.0.0.1:50051"
DEFAULT_COORDINATOR_ADDRESS = "127.0.0.1:50052"
DEFAULT_RESULT_STORE_ADDRESS = "127.0.0.1:50053"

# Schemes of gRPC targets that are passed as they are.
TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")


class AddressError(ValueError):
    """An address setting that names no server: says which entry and why."""


def _host_port(entry: str, address: str) -> tuple[str, int]:
    host, colon, port = entry.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(
            f"address {address!r}: entry {entry!r} is not host:port (a list is host:port,host:port)"
        )
    return host, int(port)


def _ip(host: str, port: int, address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise AddressError(f"address {address!r}: cannot resolve {host!r} ({exc})") from None
    return ipaddress.ip_address(found[0][4][0])


def channel_target(address: str) -> tuple[str, str | None]:
    """The gRPC target of an address setting and the authority its calls present (None: gRPC's
    default, the target itself). A list becomes an ``ipv4:``/``ipv6:`` target of the resolved
    entries; its authority is the first entry as written, so TLS checks the certificate against
    that name. Raises :class:`AddressError` for an empty entry, one that is not ``host:port``, a name
    that does not resolve, or a list that mixes IPv4 and IPv6."""
    address = address.strip()
    if not address:
        raise AddressError("address is empty")
    if address.startswith(TARGET_SCHEMES) or "," not in address:
        return address, None
    entries = [entry.strip() for entry in address.split(",")]
    if "" in entries:
        raise AddressError(f"address {address!r} has an empty entry")
    parsed = [_host_port(entry, address) for entry in entries]
    ips = [(_ip(host, port, address), port) for host, port in parsed]
    versions = {ip.version for ip, _ in ips}
    if len(versions) > 1:
        raise AddressError(f"address {address!r} mixes IPv4 and IPv6 entries")
    if versions == {4}:
        target = "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in ips)
    else:
        target = "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in ips)
    return target, entries[0]
