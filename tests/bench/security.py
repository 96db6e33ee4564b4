"""Which security a benchmark's stack runs with: the options of ``LocalStack`` that issue 14 added.

``Security()`` is everything off (``graflow dev``); ``Security.everything(directory)`` turns on
every layer, making its TLS certificates in ``directory`` (``graflow_runtime.testing.certs``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graflow.devstack import StackTls
from graflow_runtime.local_redis import RedisTls
from graflow_runtime.testing.certs import make_ca

# What Security.everything can turn on, each alone or together.
LAYERS = ("tls", "signing", "role_tokens", "redis_tls", "redis_acl")


@dataclass(frozen=True)
class Security:
    # mTLS on every gRPC hop: servers require client certificates, every process shows one.
    tls: StackTls | None = None
    # The bus's messages carry an HMAC (LocalStack(signing=True)).
    signing: bool = False
    # Servers accept a token per role, every process sends its own (LocalStack(role_tokens=True)).
    role_tokens: bool = False
    # The stack's redis-server serves TLS only (LocalStack(redis_tls=...)).
    redis_tls: RedisTls | None = None
    # Every process connects to Redis as its own ACL user (LocalStack(redis_acl=True)).
    redis_acl: bool = False

    @classmethod
    def everything(cls, directory: Path, layers: Iterable[str] = LAYERS) -> Security:
        """Every layer of ``layers`` (default: all of :data:`LAYERS`) on, certificates made in
        ``directory``."""
        chosen = set(layers)
        unknown = chosen - set(LAYERS)
        if unknown:
            raise ValueError(f"unknown layers {', '.join(sorted(unknown))}: choose among {', '.join(LAYERS)}")
        tls = mtls(directory)
        return cls(
            tls=tls if "tls" in chosen else None,
            signing="signing" in chosen,
            role_tokens="role_tokens" in chosen,
            redis_tls=(
                RedisTls(tls.ca_file, tls.cert_file, tls.key_file, client_auth="no")
                if "redis_tls" in chosen else None
            ),
            redis_acl="redis_acl" in chosen,
        )

    def stack_options(self) -> dict[str, Any]:
        return {
            "tls": self.tls, "signing": self.signing, "role_tokens": self.role_tokens,
            "redis_tls": self.redis_tls, "redis_acl": self.redis_acl,
        }

    def label(self) -> str:
        parts = [
            "mTLS" if self.tls else "",
            "bus signed" if self.signing else "",
            "a token per role" if self.role_tokens else "",
            "Redis over TLS" if self.redis_tls else "",
            "Redis ACL users" if self.redis_acl else "",
        ]
        return ", ".join(part for part in parts if part) or "none"


NO_SECURITY = Security()


def mtls(directory: Path) -> StackTls:
    """A CA and one certificate for every process of a local stack, written into ``directory``."""
    ca = make_ca(Path(directory))
    leaf = ca.issue("graflow-bench")
    return StackTls(ca.cert, leaf.cert, leaf.key, client_auth=True)
