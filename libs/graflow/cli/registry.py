"""The workflow registry's commands of ``graflow`` (issue 11: the console submits registered
workflows by name), answered by the scheduler:

    graflow workflows register MODULE:WORKFLOW [--name NAME] [--description TEXT] [--defaults JSON]
    graflow workflows list [-o json]
    graflow workflows submit NAME [--args JSON] [--label KEY=VALUE]... [--idempotency-key KEY] [--wait]
    graflow workflows delete NAME

``--defaults`` and ``--args`` are JSON objects of the run's arguments: each member becomes a channel
value of the run before its first task runs, received by a task parameter of that name.
"""

from __future__ import annotations

from typing import Any

import click

from graflow.cli.base import OK, App, output_option, parse_json, pass_app
from graflow.cli.output import datetime_text, message_data
from graflow.cli.runs import follow, labels_of
from graflow.cli.workflows import load_workflow
from graflow.errors import UsageError


def _object(text: str | None, option: str) -> dict[str, Any]:
    if not text:
        return {}
    value = parse_json(text, option)
    if not isinstance(value, dict):
        raise UsageError(f'{option} must be a JSON object, e.g. {{"day": "mon"}}')
    return value


@click.group("workflows")
def workflows() -> None:
    """Register, list, submit and delete workflows by name."""


@workflows.command("register")
@click.argument("target", metavar="MODULE:WORKFLOW")
@click.option("--name", default=None, help="the name to register it as (default: the workflow's own)")
@click.option("--description", default="", help="free text shown beside it")
@click.option("--defaults", metavar="JSON", help="the arguments a submit gets unless it sets them")
@pass_app
def register(app: App, target: str, name: str | None, description: str, defaults: str | None) -> int:
    """Register MODULE:WORKFLOW under a name (replacing the workflow registered under it)."""
    workflow = load_workflow(target)
    with app.client() as client:
        registered = client.register_workflow(
            workflow, name=name, description=description, defaults=_object(defaults, "--defaults")
        )
    app.out.line(f"registered {registered.name} (version {registered.version})")
    return OK


@workflows.command("list")
@output_option
@pass_app
def list_workflows(app: App, output: str) -> int:
    """The registered workflows."""
    with app.client() as client:
        found = client.list_workflows()
    if output == "json":
        app.out.json([message_data(w) for w in found])
        return OK
    app.out.table(
        ("NAME", "VERSION", "UPDATED", "DESCRIPTION"),
        ((w.name, str(w.version), datetime_text(w.updated_at_ms), w.description) for w in found),
    )
    return OK


@workflows.command("submit")
@click.argument("name")
@click.option("--args", "arguments", metavar="JSON", help="the run's arguments, over the registered defaults")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="label (repeatable)")
@click.option("--idempotency-key", help="repeat-safe submit: the same key gives the same run")
@click.option("--wait", is_flag=True, help="watch the run and print its result")
@pass_app
def submit(
    app: App,
    name: str,
    arguments: str | None,
    labels: tuple[str, ...],
    idempotency_key: str | None,
    wait: bool,
) -> int:
    """Submit the workflow registered as NAME; print the run id."""
    with app.client() as client:
        run = client.submit_registered(
            name,
            arguments=_object(arguments, "--args"),
            labels=labels_of(labels),
            idempotency_key=idempotency_key,
        )
        app.out.line(run.id)
        return follow(run, app.out) if wait else OK


@workflows.command("delete")
@click.argument("name")
@pass_app
def delete(app: App, name: str) -> int:
    """Remove the workflow registered as NAME (runs already submitted are not touched)."""
    with app.client() as client:
        client.delete_workflow(name)
    app.out.line(f"deleted {name}")
    return OK


COMMANDS = (workflows,)
