"""Tasks of the fuzz stack's workers: ``echo`` runs whatever arguments a fuzzed workflow or
envelope gives it; ``ask`` waits for a person, so that answers have open feedback requests to
reach (``kind``: approval, text, selection, multi_selection or custom)."""

from __future__ import annotations

import dataclasses
from typing import Any

from graflow import TaskContext, task


@task
def echo(**kwargs: Any) -> dict[str, Any]:
    return kwargs


@task(inject_context=True)
def ask(ctx: TaskContext, kind: str = "approval") -> Any:
    options = ["a", "b", "c"] if kind in ("selection", "multi_selection") else None
    answer = ctx.request_feedback(kind, f"fuzz: {kind}?", options=options, metadata={"fuzz": True})
    return dataclasses.asdict(answer)
