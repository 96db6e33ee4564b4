"""Content addressing of workflow graphs."""

from __future__ import annotations

import hashlib

from graflow_api.v1 import workflow_pb2


def graph_hash(spec: workflow_pb2.WorkflowSpec) -> str:
    """sha256 hex of the deterministic serialization of ``spec``."""
    return hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()
