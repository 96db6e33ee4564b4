"""The ``graflow`` command (click + rich): a local stack, a worker for your own tasks, and
submitting, watching and inspecting runs. ``docs/cli.md`` lists every command.

Modules: :mod:`~graflow.cli.app` (the command group, global options, exit codes),
:mod:`~graflow.cli.runs` (submit, status, watch, runs, cancel), :mod:`~graflow.cli.feedback`,
:mod:`~graflow.cli.ops` (workers, dead letters), :mod:`~graflow.cli.dev` (dev, worker),
:mod:`~graflow.cli.output` (tables, colours, JSON), :mod:`~graflow.cli.devstack` (the local stack).
"""

from graflow.cli.app import main, run
from graflow.cli.output import Output

__all__ = ["Output", "main", "run"]
