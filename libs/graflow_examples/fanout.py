"""A fan-out of ``n`` bound tasks into one join: ``fanout_start >> parallel(items...) >> fanout_join``.

Benchmarks build it with :func:`build_fanout`; ``graflow dev --example fanout`` runs :data:`fanout`.
Task names carry a ``fanout_`` prefix so this module can be loaded beside other task modules.
"""

from __future__ import annotations

from graflow import Workflow, parallel, task, workflow


@task
def fanout_start() -> int:
    return 0


@task
def fanout_item(i: int, fanout_start: int = 0) -> int:
    return fanout_start + i


@task
def fanout_join(**upstream: int) -> dict[str, int]:
    """Receives every item's result by node id."""
    return {"count": len(upstream), "total": sum(upstream.values())}


def build_fanout(n: int, name: str | None = None) -> Workflow:
    """A workflow of ``n`` parallel items (node ids ``item_0`` ... ``item_<n-1>``) between a start
    and a join; its result is ``{"count": n, "total": n * (n - 1) // 2}``."""
    if n < 1:
        raise ValueError("build_fanout(n) needs n >= 1")
    with workflow(name or f"fanout_{n}") as wf:
        fanout_start >> parallel(*[fanout_item(task_id=f"item_{i}", i=i) for i in range(n)]) >> fanout_join
    return wf


def fanout() -> Workflow:
    """The example run by ``graflow dev --example fanout``: 20 items."""
    return build_fanout(20, name="fanout")
