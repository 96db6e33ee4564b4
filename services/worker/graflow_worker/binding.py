"""Binding a task function's parameters, in Graflow's order.

For every parameter (after the context parameter when ``inject_context=True``):

1. a bound argument of that name (the node's ``args_json``),
2. else the result of the upstream node with that node id,
3. else the result of the one upstream node whose task type has that name (``fetch(task_id="f1")
   >> clean`` passes f1's result to ``clean(fetch)``; the SDK's "parameters named after upstream
   tasks"); several such nodes are ambiguous and fail the attempt (``AmbiguousArgument``),
4. else the run's channel key of that name (not for parameters named after an upstream node: a
   missing upstream result stays an error), fetched for all such parameters in one batched
   ``ChannelGet`` before binding (:func:`channel_candidates`; none when everything is bound),
5. else the parameter's default,
6. else the attempt fails: ``UpstreamResultMissing`` when the parameter names an upstream node
   whose result the result-store does not have, ``MissingArgument`` otherwise.

A ``**kwargs`` parameter receives, by node id, every upstream result (and bound argument) that no
named parameter took. Bound arguments matching no parameter fail the attempt unless there is a
``**kwargs``.

So a task binds no upstream result when it has no ``**kwargs`` and a bound argument supplies every
parameter (or it has none): :func:`binds_upstream` is false, and the worker fetches nothing for it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from graflow.dsl import TaskFunc


class BindingError(Exception):
    """The attempt can't start: its parameters can't be bound."""

    def __init__(self, error_type: str, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.retryable = retryable


@dataclass
class BoundCall:
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)


_EMPTY = inspect.Parameter.empty


def bind(
    task: TaskFunc,
    *,
    node_id: str,
    bound_args: Mapping[str, Any],
    input_node_ids: Sequence[str],
    upstream: Mapping[str, Any],
    upstream_types: Mapping[str, str] | None = None,
    decode: Callable[[Any], Any] = lambda value: value,
    channel: Mapping[str, Any] | None = None,
) -> BoundCall:
    """Arguments for ``task.fn`` (without the context). ``upstream`` maps the upstream nodes whose
    results exist to their (encoded) values, ``upstream_types`` those nodes to their task types;
    ``decode`` turns a value into the Python value; ``channel`` holds the (decoded) channel values
    of the parameters :func:`channel_candidates` named."""
    return _bind(task, _own_params(task), node_id=node_id, bound_args=bound_args,
                 input_node_ids=input_node_ids, upstream=upstream, upstream_types=upstream_types,
                 decode=decode, channel=channel or {})


def _own_params(task: TaskFunc) -> list[inspect.Parameter]:
    """The parameters binding fills (without the context parameter)."""
    params = list(task.signature.parameters.values())
    if task.inject_context:
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD
        ):
            raise BindingError(
                "InvalidTaskSignature",
                f"task {task.name!r} has inject_context=True but no positional first parameter "
                "to receive the TaskContext",
                retryable=False,
            )
        params = params[1:]
    return params


def binds_upstream(task: TaskFunc, bound_names: Collection[str]) -> bool:
    """Whether binding can take an upstream result: ``task`` has a ``**kwargs`` (it receives the
    results no parameter took) or a parameter that no bound argument (``bound_names``) supplies
    (upstream results come before the channel and the default). False for a signature that can't
    be bound at all (the attempt fails whatever upstream holds)."""
    try:
        params = _own_params(task)
    except BindingError:
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.kind is not inspect.Parameter.VAR_POSITIONAL and p.name not in bound_names)
        for p in params
    )


def channel_candidates(
    task: TaskFunc,
    *,
    bound_args: Mapping[str, Any],
    input_node_ids: Sequence[str],
    upstream: Mapping[str, Any],
    upstream_types: Mapping[str, str] | None = None,
) -> list[str]:
    """Parameters that neither a bound argument nor an upstream node (by id or task type) supply,
    whose value may come from the run's channel; empty when there is nothing to look up."""
    try:
        params = _own_params(task)
    except BindingError:
        return []
    supplied = set(bound_args) | set(upstream) | set(input_node_ids)
    if upstream_types:
        supplied |= {
            upstream_types[node] for node in input_node_ids if node in upstream and upstream_types.get(node)
        }
    return [
        p.name for p in params
        if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        and p.name not in supplied
    ]


def _bind(
    task: TaskFunc,
    params: list[inspect.Parameter],
    *,
    node_id: str,
    bound_args: Mapping[str, Any],
    input_node_ids: Sequence[str],
    upstream: Mapping[str, Any],
    upstream_types: Mapping[str, str] | None,
    decode: Callable[[Any], Any],
    channel: Mapping[str, Any],
) -> BoundCall:
    call = BoundCall()
    taken: set[str] = set()
    used_nodes: set[str] = set()
    by_type: dict[str, list[str]] = {}
    for node in input_node_ids:
        if node in upstream and upstream_types and upstream_types.get(node):
            by_type.setdefault(upstream_types[node], []).append(node)
    missing_args: list[str] = []
    missing_upstream: list[str] = []
    has_var_kw = False
    inputs = set(input_node_ids)
    for param in params:
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            has_var_kw = True
            continue
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        name = param.name
        taken.add(name)
        if name in bound_args:
            value = bound_args[name]
        elif name in upstream:
            value = decode(upstream[name])
            used_nodes.add(name)
        elif len(by_type.get(name, ())) == 1:
            node = by_type[name][0]
            value = decode(upstream[node])
            used_nodes.add(node)
        elif name in by_type:
            raise BindingError(
                "AmbiguousArgument",
                f"task {task.name!r} (node {node_id!r}) parameter {name!r} is named after task type "
                f"{name!r}, which several upstream nodes have ({', '.join(repr(n) for n in by_type[name])}); "
                "name the parameter after one node id, or take them all with **kwargs",
                retryable=False,
            )
        elif name in channel and name not in inputs:
            value = channel[name]
        elif param.default is not _EMPTY:
            if param.kind is inspect.Parameter.POSITIONAL_ONLY:
                call.args.append(param.default)
            continue
        else:
            (missing_upstream if name in inputs else missing_args).append(name)
            continue
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            call.args.append(value)
        else:
            call.kwargs[name] = value

    if missing_upstream:
        names = ", ".join(repr(n) for n in missing_upstream)
        raise BindingError(
            "UpstreamResultMissing",
            f"task {task.name!r} (node {node_id!r}) needs the result of upstream node(s) {names}, "
            "which the result-store does not have (the node failed, returned nothing or its result "
            "expired)",
            retryable=True,
        )
    if missing_args:
        names = ", ".join(repr(n) for n in missing_args)
        raise BindingError(
            "MissingArgument",
            f"task {task.name!r} (node {node_id!r}) needs parameter(s) {names}, but nothing supplies "
            "them: no bound argument, no upstream node or task type, no channel key of that name "
            f"(upstream nodes: {_describe(input_node_ids, upstream, upstream_types)}) and no default",
            retryable=False,
        )

    extra = [name for name in bound_args if name not in taken]
    if extra and not has_var_kw:
        raise BindingError(
            "InvalidArguments",
            f"task {task.name!r} (node {node_id!r}) got bound argument(s) "
            f"{', '.join(repr(n) for n in extra)} but has no parameter of that name",
            retryable=False,
        )
    if has_var_kw:
        for name in extra:
            call.kwargs[name] = bound_args[name]
        for node in input_node_ids:
            if node in upstream and node not in used_nodes and node not in taken and node not in call.kwargs:
                call.kwargs[node] = decode(upstream[node])
    return call


def _describe(nodes: Sequence[str], upstream: Mapping[str, Any],
              types: Mapping[str, str] | None) -> str:
    if not nodes:
        return "none"
    parts = []
    for node in nodes:
        if node not in upstream:
            parts.append(f"{node!r} (no result)")
        elif types and types.get(node) and types[node] != node:
            parts.append(f"{node!r} (task {types[node]!r})")
        else:
            parts.append(repr(node))
    return ", ".join(parts)
