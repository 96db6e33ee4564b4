"""A release that waits for people: ``build >> deploy``, where ``deploy`` asks for an approval and
then for a region, and runs again with each answer (``graflow feedback respond ...``).
"""

from __future__ import annotations

from typing import Any

from graflow import TaskContext, task, workflow


@task
def build() -> dict[str, Any]:
    return {"version": "1.4.2"}


@task(inject_context=True)
def deploy(ctx: TaskContext, build: dict[str, Any]) -> str:
    if not ctx.request_approval(f"deploy {build['version']}?", timeout=3600, on_timeout="fail"):
        return "rejected"
    region = ctx.request_selection("where?", ["eu", "us"])
    return f"{build['version']} deployed to {region}"


with workflow("release") as release:
    build >> deploy
