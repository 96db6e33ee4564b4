"""The workflow DSL: ``@task``, ``>>``, ``|``, ``workflow(name)``, ``chain``, ``parallel``.

Building a workflow produces a :class:`~graflow_api.v1.workflow_pb2.WorkflowSpec`: task type names,
JSON arguments and structure. No code travels; workers run the task types registered in their own
process (``@task`` functions found in their configured modules).

Graph operators register nodes and edges on the workflow opened by ``with workflow(...)``::

    with workflow("etl") as wf:
        fetch >> (clean | enrich) >> report

An edge that closes a cycle (``agent >> tool >> agent``: ``tool -> agent``) becomes a loop edge
(``EdgeSpec.loop``; see docs/architecture.md, "Dynamic control flow").
"""

from __future__ import annotations

import contextvars
import inspect
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from graflow import payload
from graflow.errors import WorkflowDefinitionError
from graflow.policies import GroupPolicy, RetryPolicy, from_name, strict
from graflow_api.v1 import workflow_pb2
from graflow_runtime.names import NODE_ID_RULE, is_node_id

_current: contextvars.ContextVar[Workflow | None] = contextvars.ContextVar("graflow_workflow", default=None)


def _check_id(kind: str, value: str) -> str:
    if not isinstance(value, str) or not is_node_id(value):
        raise WorkflowDefinitionError(f"{kind} {value!r} is invalid: {NODE_ID_RULE}")
    return value


@dataclass(frozen=True)
class TaskOptions:
    retry: RetryPolicy | None = None
    timeout: float | None = None
    queue: str | None = None
    priority: int = 0
    max_cycles: int | None = None


class _Composable:
    """``>>`` (then) and ``|`` (in parallel with), shared by everything that can be in a graph."""

    def __rshift__(self, other: Composable) -> Flow:
        return _flow(self) >> other

    def __rrshift__(self, other: Composable) -> Flow:
        return _flow(other) >> self

    def __or__(self, other: Composable) -> Group:
        return _parallel([self, other])

    def __ror__(self, other: Composable) -> Group:
        return _parallel([other, self])


class TaskFunc(_Composable):
    """A function registered as a task type. Use it in a graph (``a >> b``), bind arguments with
    ``fn(task_id="t1", x=1)``, or call it directly without ``task_id`` (runs locally)."""

    def __init__(self, fn: Callable[..., Any], *, name: str | None, options: TaskOptions,
                 inject_context: bool) -> None:
        self.fn = fn
        self.name = _check_id("task name", name or fn.__name__)
        self.options = options
        self.inject_context = inject_context
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", self.name)
        self.__module__ = getattr(fn, "__module__", __name__)

    @property
    def node_id(self) -> str:
        return self.name

    def __call__(self, *args: Any, task_id: str | None = None, **kwargs: Any) -> Any:
        if task_id is None:
            return self.fn(*args, **kwargs)
        if args:
            raise WorkflowDefinitionError(
                f"bind arguments of task {self.name!r} by keyword: {self.name}(task_id=..., x=...)"
            )
        node = TaskNode(self, _check_id("task_id", task_id), kwargs)
        active = _current.get()
        # Like Graflow, a node created inside a workflow belongs to it even before it has edges.
        return active._add_node(node) if active is not None else node

    def default_node(self) -> TaskNode:
        return TaskNode(self, self.name, {})


    def __repr__(self) -> str:
        return f"<task {self.name}>"


@dataclass(eq=False)
class TaskNode(_Composable):
    """One node of a workflow: a task type, its node id and bound arguments."""

    task: TaskFunc
    node_id: str
    args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.args_json = payload.dumps(self.args) if self.args else b""

    def to_proto(self) -> workflow_pb2.NodeSpec:
        opts = self.task.options
        return workflow_pb2.NodeSpec(
            id=self.node_id,
            task_type=self.task.name,
            args_json=self.args_json,
            retry=opts.retry.to_proto() if opts.retry else None,
            timeout_ms=round(opts.timeout * 1000) if opts.timeout else 0,
            queue=opts.queue or "",
            priority=opts.priority,
            max_cycles=opts.max_cycles or 0,
        )



class Group(_Composable):
    """A parallel group: its members run concurrently; what follows waits for its join."""

    def __init__(self, workflow: Workflow, members: list[TaskNode], policy: GroupPolicy,
                 group_id: str | None) -> None:
        self.workflow = workflow
        self.members = members
        self.policy = policy
        self.node_id = group_id or workflow._next_group_id()
        self.named = group_id is not None
        self.absorbed = False

    def with_execution(self, *, policy: GroupPolicy | str | None = None) -> Group:
        """Graflow's spelling: ``(a | b).with_execution(policy="best_effort")``."""
        if policy is not None:
            self.policy = from_name(policy) if isinstance(policy, str) else policy
        return self

    def set_group_name(self, name: str) -> Group:
        self.node_id = _check_id("group name", name)
        self.named = True
        return self

    def to_proto(self) -> workflow_pb2.GroupSpec:
        return workflow_pb2.GroupSpec(
            id=self.node_id,
            member_ids=[m.node_id for m in self.members],
            policy=self.policy.to_proto(),
        )



@dataclass
class Flow(_Composable):
    """A connected piece of a graph: the units it starts with and the units it ends with."""

    heads: list[str]
    tails: list[str]

    def __rshift__(self, other: Composable) -> Flow:
        right = _flow(other)
        wf = current_workflow()
        for tail in self.tails:
            for head in right.heads:
                wf._add_edge(tail, head)
        return Flow(self.heads, right.tails)


Composable = TaskFunc | TaskNode | Group | Flow


def _flow(item: Composable) -> Flow:
    wf = current_workflow()
    if isinstance(item, Flow):
        return item
    if isinstance(item, Group):
        wf._add_group(item)
        return Flow([item.node_id], [item.node_id])
    node = wf._add_node(item)
    return Flow([node.node_id], [node.node_id])


def _members(item: Composable) -> list[Any]:
    anonymous = isinstance(item, Group) and not item.named and not item.absorbed
    if anonymous and item not in item.workflow._used_groups:
        item.absorbed = True
        return list(item.members)
    if isinstance(item, (TaskFunc, TaskNode)):
        return [item]
    raise WorkflowDefinitionError(
        "members of a parallel group must be tasks (a >> b inside a group is not supported; "
        "put the chain after the group instead)"
    )


def _parallel(items: Iterable[Composable], *, name: str | None = None,
              policy: GroupPolicy | str | None = None) -> Group:
    wf = current_workflow()
    members: list[TaskNode] = []
    for item in items:
        for member in _members(item):
            node = wf._add_node(member)
            if node in members:
                raise WorkflowDefinitionError(f"task {node.node_id!r} appears twice in one parallel group")
            members.append(node)
    resolved = from_name(policy) if isinstance(policy, str) else (policy or strict())
    group = Group(wf, members, resolved, _check_id("group name", name) if name else None)
    wf._groups_created.append(group)
    return group


def parallel(*tasks: Composable, name: str | None = None, policy: GroupPolicy | str | None = None) -> Group:
    """A parallel group of ``tasks``; ``policy`` is strict (default), best_effort, at_least(n) or
    critical(...)."""
    if len(tasks) < 1:
        raise WorkflowDefinitionError("parallel() needs at least one task")
    return _parallel(tasks, name=name, policy=policy)


def chain(*items: Composable) -> Flow:
    """``chain(a, b, c)`` is ``a >> b >> c``."""
    if not items:
        raise WorkflowDefinitionError("chain() needs at least one task")
    flow = _flow(items[0])
    for item in items[1:]:
        flow = flow >> item
    return flow


class Workflow:
    """A workflow under construction; ``spec()`` gives the contract message to submit."""

    def __init__(self, name: str, *, queue: str | None = None, retry: RetryPolicy | None = None,
                 timeout: float | None = None, max_cycles: int | None = None,
                 max_steps: int | None = None) -> None:
        self.name = name
        self.defaults = workflow_pb2.RunDefaults(
            queue=queue or "",
            retry=retry.to_proto() if retry else None,
            timeout_ms=round(timeout * 1000) if timeout else 0,
            max_cycles=max_cycles or 0,
            max_steps=max_steps or 0,
        )
        self._nodes: dict[str, TaskNode] = {}
        # (from, to) -> True for a loop edge (it closes a cycle); successors by the other edges.
        self._edges: dict[tuple[str, str], bool] = {}
        self._successors: dict[str, set[str]] = {}
        self._groups_created: list[Group] = []
        self._used_groups: list[Group] = []
        self._group_ids = itertools.count(1)
        self._token: contextvars.Token[Workflow | None] | None = None

    def __enter__(self) -> Workflow:
        self._token = _current.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None

    def add(self, *items: Composable) -> Workflow:
        """Add tasks or groups that have no edges (a single-task workflow)."""
        token = _current.set(self)
        try:
            for item in items:
                _flow(item)
        finally:
            _current.reset(token)
        return self

    @property
    def node_ids(self) -> list[str]:
        return list(self._nodes)

    def _next_group_id(self) -> str:
        while True:
            candidate = f"group_{next(self._group_ids)}"
            if candidate not in self._nodes:
                return candidate

    def _add_node(self, item: TaskFunc | TaskNode) -> TaskNode:
        node = item.default_node() if isinstance(item, TaskFunc) else item
        existing = self._nodes.get(node.node_id)
        if existing is None:
            self._nodes[node.node_id] = node
            return node
        if existing is node or (existing.task is node.task and existing.args == node.args):
            return existing
        raise WorkflowDefinitionError(
            f"node id {node.node_id!r} is used by two different tasks; give one a task_id: "
            f"{node.task.name}(task_id='...')"
        )

    def _add_group(self, group: Group) -> None:
        if group.workflow is not self:
            raise WorkflowDefinitionError("a parallel group can only be used in the workflow that made it")
        if group not in self._used_groups:
            self._used_groups.append(group)

    def _add_edge(self, src: str, dst: str) -> None:
        if src == dst:
            raise WorkflowDefinitionError(
                f"{src!r} >> {src!r}: a task can't depend on itself (to run it again, call "
                "ctx.next_iteration() in it)"
            )
        if (src, dst) in self._edges:
            return
        loop = self._leads_to(dst, src)
        if loop:
            groups = {g.node_id for g in self._used_groups}
            if src in groups or dst in groups:
                raise WorkflowDefinitionError(
                    f"{src!r} >> {dst!r} closes a loop through a parallel group; a loop must go from a "
                    "task to a task (put a task after the group and loop from it)"
                )
        self._edges[(src, dst)] = loop
        if not loop:
            self._successors.setdefault(src, set()).add(dst)

    def _leads_to(self, start: str, goal: str) -> bool:
        """Whether ``start`` reaches ``goal`` through the edges so far (loop edges left out; an edge
        into a group reaches its members, members reach their group)."""
        members = {g.node_id: [m.node_id for m in g.members] for g in self._used_groups}
        groups_of: dict[str, list[str]] = {}
        for group_id, ids in members.items():
            for member in ids:
                groups_of.setdefault(member, []).append(group_id)
        seen, stack = {start}, [start]
        while stack:
            current = stack.pop()
            for nxt in self._successors.get(current, set()) | set(groups_of.get(current, ())):
                for reached in (nxt, *members.get(nxt, ())):
                    if reached == goal:
                        return True
                    if reached not in seen:
                        seen.add(reached)
                        stack.append(reached)
        return False

    def spec(self) -> workflow_pb2.WorkflowSpec:
        groups = [g for g in self._groups_created if not g.absorbed]
        seen: set[str] = set()
        for group in groups:
            if group.node_id in self._nodes or group.node_id in seen:
                raise WorkflowDefinitionError(
                    f"group id {group.node_id!r} clashes with another node or group"
                )
            seen.add(group.node_id)
        if not self._nodes:
            raise WorkflowDefinitionError(f"workflow {self.name!r} has no tasks")
        return workflow_pb2.WorkflowSpec(
            name=self.name,
            nodes=[n.to_proto() for n in self._nodes.values()],
            edges=[
                workflow_pb2.EdgeSpec(from_id=s, to_id=d, loop=loop) for (s, d), loop in self._edges.items()
            ],
            groups=[g.to_proto() for g in groups],
            defaults=self.defaults,
        )


def workflow(name: str, **options: Any) -> Workflow:
    """Open a workflow: ``with workflow("etl") as wf: a >> b``. Options: queue, retry (RetryPolicy),
    timeout (seconds), max_cycles, max_steps."""
    return Workflow(_check_id("workflow name", name), **options)


def current_workflow() -> Workflow:
    wf = _current.get()
    if wf is None:
        raise WorkflowDefinitionError("build graphs inside `with workflow(name) as wf:`")
    return wf


def task(fn: Callable[..., Any] | str | None = None, *, id: str | None = None,  # noqa: A002 - Graflow's spelling
         retry: RetryPolicy | None = None, timeout: float | None = None, queue: str | None = None,
         priority: int = 0, max_cycles: int | None = None, inject_context: bool = False) -> Any:
    """Register a function as a task type.

    ``@task``, ``@task("name")`` or ``@task(id="name", retry=RetryPolicy(...), timeout=30)``.
    With ``inject_context=True`` the function receives a :class:`graflow.TaskContext` as its first
    argument. Parameters named after upstream tasks receive their results.

    ``priority``: above 0, the task's deliveries go to its queue's high lane, which workers read
    before the normal lane, so they overtake work already waiting in the queue (the high lane also
    carries attempts that replace ones lost with their worker); 0 or below, the normal lane. Within
    a lane deliveries are first in, first out, except that tasks released together are queued
    highest priority first.
    """
    if isinstance(fn, str):
        id, fn = fn, None  # noqa: A001
    options = TaskOptions(retry=retry, timeout=timeout, queue=queue, priority=priority, max_cycles=max_cycles)

    def wrap(func: Callable[..., Any]) -> TaskFunc:
        return TaskFunc(func, name=id, options=options, inject_context=inject_context)

    return wrap(fn) if fn is not None else wrap
