"""Finding the workflow ``graflow submit`` names, and giving its nodes arguments at submit time.

    graflow submit mymod:wf --arg fetch.url=https://... --arg fetch.limit=10
    graflow submit mymod:wf --args-json '{"fetch": {"url": "https://...", "limit": 10}}'

Arguments are the nodes' bound arguments (``NodeSpec.args_json``, what ``fetch(task_id=..., url=...)``
binds in Python); given ones replace those of the same name and the others stay.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from graflow import payload
from graflow.cli.base import parse_json
from graflow.dsl import Workflow
from graflow.errors import UsageError
from graflow_api.v1 import workflow_pb2


def import_from_cwd() -> None:
    """Modules of the current directory are importable, as with ``python -m`` (and ``celery -A``)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def require_modules(names: Sequence[str], option: str) -> None:
    """Each named module can be found from here, or a usage error naming it."""
    import_from_cwd()
    for name in names:
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError) as exc:
            raise UsageError(f"{option} {name}: cannot find module {name!r}: {exc}") from exc
        if found is None:
            raise UsageError(
                f"{option} {name}: no module {name!r} in {os.getcwd()} or on the Python path "
                "(run from the directory that holds it)"
            )


def load_workflow(target: str) -> Workflow | workflow_pb2.WorkflowSpec:
    """``module:attr`` naming a Workflow, a WorkflowSpec or a zero-argument function returning one."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UsageError(f"{target!r} is not MODULE:WORKFLOW (e.g. graflow_examples.etl:etl)")
    import_from_cwd()
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if callable(obj) and not isinstance(obj, Workflow):
        obj = obj()
    if not isinstance(obj, (Workflow, workflow_pb2.WorkflowSpec)):
        raise UsageError(
            f"{target} is a {type(obj).__name__}, not a graflow Workflow (or a function returning one)"
        )
    return obj


def parse_node_args(pairs: Sequence[str], args_json: str | None) -> dict[str, dict[str, Any]]:
    """``--args-json`` then each ``--arg NODE.PARAM=VALUE`` (VALUE is JSON, else a string) as
    ``{node: {param: value}}``. Node ids may hold dots: the parameter is after the last one."""
    by_node: dict[str, dict[str, Any]] = {}
    if args_json is not None:
        given = parse_json(args_json, "--args-json")
        if not isinstance(given, dict) or not all(isinstance(v, dict) for v in given.values()):
            raise UsageError('--args-json must be an object of objects: {"node": {"param": value}}')
        by_node = {node: dict(params) for node, params in given.items()}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        node, dot, param = key.rpartition(".")
        if not sep or not dot or not node or not param:
            raise UsageError(f"--arg {pair!r} is not NODE.PARAM=VALUE (e.g. --arg fetch.limit=10)")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        by_node.setdefault(node, {})[param] = value
    return by_node


def with_node_args(
    workflow: Workflow | workflow_pb2.WorkflowSpec, args: Mapping[str, Mapping[str, Any]]
) -> workflow_pb2.WorkflowSpec:
    """The workflow's spec with ``args`` merged into its nodes' bound arguments; a node the
    workflow does not have is a usage error naming it and the nodes it has."""
    spec = workflow_pb2.WorkflowSpec()
    spec.CopyFrom(workflow.spec() if isinstance(workflow, Workflow) else workflow)
    nodes = {node.id: node for node in spec.nodes}
    for node_id, params in args.items():
        node = nodes.get(node_id)
        if node is None:
            raise UsageError(
                f"--arg: workflow {spec.name!r} has no node {node_id!r} (its nodes: {', '.join(nodes)})"
            )
        node.args_json = payload.dumps({**payload.decode_args(node.args_json), **params})
    return spec
