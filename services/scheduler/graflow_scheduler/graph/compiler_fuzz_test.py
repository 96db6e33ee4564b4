"""Property: every workflow spec, hostile or not, is compiled into a consistent plan or refused
with a SpecError naming the problem (INVALID_ARGUMENT at SubmitRun); never another exception."""

from __future__ import annotations

import random

from hypothesis import given

from graflow_runtime.testing import hostile
from graflow_runtime.testing.properties import PROPERTY_SETTINGS, RANDOMS

from graflow_scheduler.graph.compiler import Limits, SpecError, compile_spec
from graflow_scheduler.graph.plan import NodeKind


@PROPERTY_SETTINGS
@given(RANDOMS)
def test_every_spec_compiles_to_a_consistent_plan_or_is_refused_with_a_reason(rng: random.Random) -> None:
    spec = hostile.workflow_spec(rng, task_types=["echo", "add_one"])
    try:
        plan = compile_spec(spec, Limits())
    except SpecError as exc:
        assert str(exc).strip()
        return
    assert set(plan.nodes) == {n.id for n in spec.nodes} | {g.id for g in spec.groups}
    assert plan.roots, "an accepted workflow has a node that can start"
    for plan_node in plan.nodes.values():
        assert set(plan_node.successors) <= set(plan.nodes)
        if plan_node.kind is NodeKind.TASK:
            assert plan_node.task is not None
            assert set(plan_node.task.input_node_ids) <= set(plan.nodes)
    assert set(plan.sinks) <= set(plan.nodes)
