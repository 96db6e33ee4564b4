"""The ResultStore gRPC API: validation and the mapping to :class:`ResultStore` (errors raised here
reach callers as status codes through the server's interceptor)."""

from __future__ import annotations

import json
import time

import structlog

from graflow_api.v1 import common_pb2, result_store_pb2, result_store_pb2_grpc, workflow_pb2
from graflow_runtime import user_json
from graflow_runtime.errors import InvalidRequest, NotFound
from graflow_runtime.graphs import GRAPH_HASH_RULE, graph_hash, is_graph_hash
from graflow_runtime.limits import MAX_CHANNEL_KEYS
from graflow_runtime.names import channel_key_problem
from graflow_runtime.runids import run_id_problem

from graflow_result_store.store import Disposition, ResultStore

log = structlog.get_logger(__name__)

KEEP_ALIVE_MAX_RUNS = 10_000

_DISPOSITIONS = {
    Disposition.STORED: result_store_pb2.PutResultsResponse.DISPOSITION_STORED,
    Disposition.DUPLICATE: result_store_pb2.PutResultsResponse.DISPOSITION_DUPLICATE,
    Disposition.STALE: result_store_pb2.PutResultsResponse.DISPOSITION_STALE,
}


def _check_key_count(count: int, field: str) -> None:
    if count > MAX_CHANNEL_KEYS:
        raise InvalidRequest(f"{field}: {count:,} keys; the limit MAX_CHANNEL_KEYS is {MAX_CHANNEL_KEYS:,}")


def _require_run_id(run_id: str, field: str = "run_id") -> None:
    problem = run_id_problem(run_id)
    if problem:
        raise InvalidRequest(f"{field}: {problem}")


def _check_key(key: str, field: str) -> None:
    problem = channel_key_problem(key)
    if problem:
        raise InvalidRequest(f"{field}: {problem}")


class ResultStoreServicer(result_store_pb2_grpc.ResultStoreServicer):
    def __init__(self, store: ResultStore, *, max_value_bytes: int) -> None:
        self._store = store
        self._max_value_bytes = max_value_bytes

    def _check_size(self, what: str, size: int) -> None:
        if size > self._max_value_bytes:
            raise InvalidRequest(
                f"{what} is {size} bytes, over the limit of {self._max_value_bytes} bytes "
                "(GRAFLOW_RESULT_STORE_MAX_VALUE_BYTES); store large data elsewhere and return a reference"
            )

    # ---- results ----
    async def PutResults(self, request, context):  # noqa: N802 - gRPC method name
        now_ms = int(time.time() * 1000)
        batch: list[result_store_pb2.NodeResult] = []
        for index, result in enumerate(request.results):
            _require_run_id(result.run_id, f"results[{index}]")
            if not result.node_id:
                raise InvalidRequest(f"results[{index}] (run {result.run_id!r}): node_id is required")
            if result.attempt < 1 or len(result.value.data) > self._max_value_bytes:
                # (the item's description is formatted only when it is needed)
                where = f"results[{index}] (run {result.run_id!r}, node {result.node_id!r})"
                if result.attempt < 1:
                    raise InvalidRequest(f"{where}: attempt must be >= 1, got {result.attempt}")
                self._check_size(f"{where}: value", len(result.value.data))
            result.stored_at_ms = now_ms  # (the request is this call's own message: no copy)
            batch.append(result)
        dispositions = await self._store.put_results(batch)
        stale = [
            (r.run_id, r.node_id, r.attempt)
            for r, d in zip(batch, dispositions, strict=True)
            if d is Disposition.STALE
        ]
        if stale:
            log.info("stale results rejected", results=stale)
        return result_store_pb2.PutResultsResponse(dispositions=[_DISPOSITIONS[d] for d in dispositions])

    async def GetResults(self, request, context):  # noqa: N802
        _require_run_id(request.run_id)
        found, missing = await self._store.get_results(request.run_id, list(request.node_ids))
        return result_store_pb2.GetResultsResponse(results=found, missing_node_ids=missing)

    # ---- graphs ----
    async def PutGraph(self, request, context):  # noqa: N802
        actual = graph_hash(request.spec)
        if request.graph_hash != actual:
            raise InvalidRequest(
                f"graph_hash {request.graph_hash!r} does not match the spec: its sha256 over the "
                f"deterministic serialization is {actual!r}"
            )
        created = await self._store.put_graph(actual, request.spec.SerializeToString(deterministic=True))
        return result_store_pb2.PutGraphResponse(created=created)

    async def GetGraph(self, request, context):  # noqa: N802
        raw = await self._store.get_graph(request.graph_hash) if request.graph_hash else None
        if raw is None:
            raise NotFound(f"no graph stored under hash {request.graph_hash!r}")
        return result_store_pb2.GetGraphResponse(spec=workflow_pb2.WorkflowSpec.FromString(raw))

    # ---- channels ----
    def _check_keys(self, keys: list[str]) -> None:
        _check_key_count(len(keys), "keys")
        for index, key in enumerate(keys):
            _check_key(key, f"keys[{index}]")

    async def ChannelGet(self, request, context):  # noqa: N802
        _require_run_id(request.run_id)
        keys = list(request.keys)
        self._check_keys(keys)
        values = await self._store.channel_get(request.run_id, keys)
        entries = [
            result_store_pb2.ChannelEntry(key=key, value=common_pb2.Payload.FromString(values[key]))
            for key in dict.fromkeys(keys)
            if key in values
        ]
        return result_store_pb2.ChannelGetResponse(entries=entries)

    async def ChannelSet(self, request, context):  # noqa: N802
        _require_run_id(request.run_id)
        entries: list[tuple[str, bytes]] = []
        _check_key_count(len(request.entries), "entries")
        for index, entry in enumerate(request.entries):
            _check_key(entry.key, f"entries[{index}].key")
            self._check_size(f"entries[{index}] (key {entry.key!r}): value", len(entry.value.data))
            entries.append((entry.key, entry.value.SerializeToString()))
        await self._store.channel_set(request.run_id, entries, request.ttl_ms)
        return result_store_pb2.ChannelSetResponse()

    async def ChannelDelete(self, request, context):  # noqa: N802
        _require_run_id(request.run_id)
        keys = list(request.keys)
        self._check_keys(keys)
        deleted = await self._store.channel_delete(request.run_id, keys)
        return result_store_pb2.ChannelDeleteResponse(deleted=deleted)

    async def ChannelKeys(self, request, context):  # noqa: N802
        _require_run_id(request.run_id)
        return result_store_pb2.ChannelKeysResponse(keys=await self._store.channel_keys(request.run_id))

    async def ChannelUpdate(self, request, context):  # noqa: N802
        _require_run_id(request.run_id)
        _check_key(request.key, "key")
        operation = request.operation
        if operation not in _UPDATE_OPERATIONS:
            raise InvalidRequest(f"operation must be APPEND, PREPEND or ADD, got {operation}")
        if request.value.content_type not in ("", _JSON):
            raise InvalidRequest(f"value must be JSON, got content type {request.value.content_type!r}")
        self._check_size(f"key {request.key!r}: value", len(request.value.data))
        try:
            value = user_json.loads(request.value.data)
        except user_json.UserJsonError as exc:
            raise InvalidRequest(f"value of key {request.key!r}: {exc}") from None
        if operation == _ADD and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise InvalidRequest(f"ADD takes a JSON number, got {request.value.data[:64]!r}")
        text = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        stored = await self._store.channel_update(
            request.run_id, request.key, operation, text, request.ttl_ms, max_bytes=self._max_value_bytes
        )
        response = result_store_pb2.ChannelUpdateResponse()
        if operation == _ADD:
            response.value.CopyFrom(common_pb2.Payload.FromString(stored))
        return response

    # ---- checkpoints ----
    async def PutCheckpoint(self, request, context):  # noqa: N802
        _require_run_id(request.run_id)
        if not request.node_id:
            raise InvalidRequest("node_id is required")
        self._check_size(f"checkpoint of node {request.node_id!r}", len(request.value.data))
        await self._store.put_checkpoint(request.run_id, request.node_id, request.value.SerializeToString())
        return result_store_pb2.PutCheckpointResponse()

    async def KeepRunsAlive(self, request, context):  # noqa: N802
        if len(request.run_ids) > KEEP_ALIVE_MAX_RUNS:
            raise InvalidRequest(f"{len(request.run_ids)} run ids; at most {KEEP_ALIVE_MAX_RUNS} per call")
        if len(request.graph_hashes) > KEEP_ALIVE_MAX_RUNS:
            raise InvalidRequest(
                f"graph_hashes: {len(request.graph_hashes)} hashes; at most {KEEP_ALIVE_MAX_RUNS} per call"
            )
        for index, run_id in enumerate(request.run_ids):
            _require_run_id(run_id, f"run_ids[{index}]")
        for index, digest in enumerate(request.graph_hashes):
            if not is_graph_hash(digest):
                raise InvalidRequest(
                    f"graph_hashes[{index}] {digest[:80]!r} is invalid: use {GRAPH_HASH_RULE}"
                )
        await self._store.keep_alive(list(request.run_ids), list(request.graph_hashes))
        return result_store_pb2.KeepRunsAliveResponse()

    async def GetCheckpoint(self, request, context):  # noqa: N802
        _require_run_id(request.run_id)
        if not request.node_id:
            raise InvalidRequest("node_id is required")
        raw = await self._store.get_checkpoint(request.run_id, request.node_id)
        if raw is None:
            return result_store_pb2.GetCheckpointResponse(found=False)
        return result_store_pb2.GetCheckpointResponse(found=True, value=common_pb2.Payload.FromString(raw))


_JSON = "application/json"
_ADD = result_store_pb2.ChannelUpdateRequest.OPERATION_ADD
_UPDATE_OPERATIONS = frozenset({
    result_store_pb2.ChannelUpdateRequest.OPERATION_APPEND,
    result_store_pb2.ChannelUpdateRequest.OPERATION_PREPEND,
    _ADD,
})
