"""Content addressing of workflow graphs."""

from __future__ import annotations

import hashlib
import re

from graflow_api.v1 import workflow_pb2

GRAPH_HASH_RULE = "64 lowercase hex characters (the sha256 of the graph, as graph_hash makes it)"
_GRAPH_HASH = re.compile(r"[0-9a-f]{64}")


def is_graph_hash(value: str) -> bool:
    return _GRAPH_HASH.fullmatch(value) is not None


def graph_hash(spec: workflow_pb2.WorkflowSpec) -> str:
    """sha256 hex of the deterministic serialization of ``spec``."""
    return hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()
