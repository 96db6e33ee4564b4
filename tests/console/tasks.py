"""Tasks of the console's tests, registered in the stack's worker."""

from __future__ import annotations

from typing import Any

from graflow import TaskContext, task, workflow


@task(inject_context=True)
def ask(ctx: TaskContext) -> dict[str, Any]:
    """Asks one question of each kind the approval example does not: text, several options, custom."""
    text = ctx.request_text_input("release notes?")
    chosen = ctx.request_feedback("multi_selection", "regions?", options=["eu", "us", "ap"])
    regions = chosen.selected_multiple
    custom = ctx.request_feedback("custom", "limits?", metadata={"unit": "rps"}).custom_data
    return {"text": text, "regions": regions, "custom": custom}


@task
def fail_loudly() -> None:
    raise ValueError("this node fails on purpose")


with workflow("questions") as questions:
    questions.add(ask)

with workflow("failing") as failing:
    failing.add(fail_loudly)


@task
def child_value() -> int:
    return 7


@task(inject_context=True)
def start_child(ctx: TaskContext) -> int:
    """Runs a one-node child run and returns its result (the run page's family panel)."""
    with workflow("child") as child:
        child.add(child_value)
    return ctx.run_child(child) * 2


with workflow("family") as family:
    family.add(start_child)
