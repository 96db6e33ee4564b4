"""Graflow: write ``fetch >> (clean | enrich) >> report`` in Python and have workers run it.

    from graflow import task, workflow, Client

    @task
    def fetch() -> int:
        return 1

    with workflow("demo") as wf:
        fetch >> double

    run = Client().submit(wf)
    print(run.result())
"""

from graflow.client import Client
from graflow.context import Channel, TaskContext
from graflow.dsl import Flow, Group, TaskFunc, TaskNode, Workflow, chain, parallel, task, workflow
from graflow.errors import (
    ChildRunError,
    FeedbackError,
    GraflowError,
    GroupFailedError,
    NonRetryableError,
    PayloadError,
    RunCanceledError,
    RunError,
    RunFailedError,
    RunNotFoundError,
    ServiceCallError,
    ServiceUnavailableError,
    TaskCanceledError,
    TaskError,
    WorkflowDefinitionError,
)
from graflow.feedback import FeedbackResponse
from graflow.policies import GroupPolicy, RetryPolicy, at_least, best_effort, critical, strict
from graflow.run import Run, RunChannel

__all__ = [
    "Channel",
    "ChildRunError",
    "Client",
    "FeedbackError",
    "FeedbackResponse",
    "Flow",
    "GraflowError",
    "Group",
    "GroupFailedError",
    "GroupPolicy",
    "NonRetryableError",
    "PayloadError",
    "RetryPolicy",
    "Run",
    "RunCanceledError",
    "RunChannel",
    "RunError",
    "RunFailedError",
    "RunNotFoundError",
    "ServiceCallError",
    "ServiceUnavailableError",
    "TaskCanceledError",
    "TaskContext",
    "TaskError",
    "TaskFunc",
    "TaskNode",
    "Workflow",
    "WorkflowDefinitionError",
    "at_least",
    "best_effort",
    "chain",
    "critical",
    "parallel",
    "strict",
    "task",
    "workflow",
]
