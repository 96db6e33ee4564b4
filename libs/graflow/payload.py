"""Values on the wire: JSON, or raw bytes with a content type; never Python object serialization."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from graflow.errors import PayloadError
from graflow_api.v1 import common_pb2, result_store_pb2
from graflow_runtime import user_json

JSON = "application/json"
BYTES = "application/octet-stream"


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> bytes:
    """JSON bytes of ``value`` (dataclasses become objects, sets and tuples lists)."""
    try:
        return json.dumps(value, default=_default, separators=(",", ":"), ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:
        raise PayloadError(
            f"value of type {type(value).__name__} can't be sent as JSON ({exc}); return JSON-compatible "
            "data (dict, list, str, int, float, bool, None, dataclass) or bytes"
        ) from exc


def encode(value: Any) -> common_pb2.Payload:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return common_pb2.Payload(content_type=BYTES, data=bytes(value))
    return common_pb2.Payload(content_type=JSON, data=dumps(value))


def decode(payload: common_pb2.Payload) -> Any:
    if payload.content_type in ("", JSON):
        return json.loads(payload.data) if payload.data else None
    return bytes(payload.data)


def decode_results(results: Iterable[result_store_pb2.NodeResult]) -> dict[str, Any]:
    """Node id -> decoded value of each result."""
    return {result.node_id: decode(result.value) for result in results}


def decode_args(args_json: bytes) -> dict[str, Any]:
    """Bound arguments of a node: a JSON object (empty bytes mean ``{}``). Parsed as user JSON
    (``graflow_runtime.user_json``: the scheduler's rules at submit, so bytes that reach a worker
    some other way cannot nest deep enough to raise RecursionError); a ValueError says what is
    wrong."""
    if not args_json:
        return {}
    args = user_json.loads(args_json)
    if not isinstance(args, dict):
        raise PayloadError(f"arguments must be a JSON object, got {type(args).__name__}")
    return args
