"""The naming rules of the contracts, written once: node ids, queue names and task types.

The scheduler enforces them on every submitted workflow and directive, the coordinator on every
queue it is asked to use, and the SDK checks node ids while a workflow is built (so a bad id fails
at the line that wrote it, not at submit). Plain Python, no third-party imports: the SDK's client
path imports it.
"""

from __future__ import annotations

import re

# Node (and group) ids: also the parameter name downstream tasks receive a node's result under.
NODE_ID_MAX = 128
NODE_ID_RULE = f"use 1-{NODE_ID_MAX} letters, digits, '_', '-' or '.'"
_NODE_ID = re.compile(rf"[A-Za-z0-9_.\-]{{1,{NODE_ID_MAX}}}")

# Queue names: any characters but whitespace (a queue is the stream ``gf:q:<name>``).
QUEUE_NAME_MAX = 128
QUEUE_NAME_RULE = f"1-{QUEUE_NAME_MAX} characters without whitespace or newlines"
DEFAULT_QUEUE = "default"
_WHITESPACE = re.compile(r"\s")

# Task types: the name a worker registered a task function under (``@task`` name).
TASK_TYPE_MAX = 256
TASK_TYPE_RULE = f"at most {TASK_TYPE_MAX} characters, no whitespace"

# Channel keys (``ctx.get_channel()``, the result-store's Channel* calls): a field of the run's
# channel hash, named in logs and error messages.
CHANNEL_KEY_MAX = 256
CHANNEL_KEY_RULE = f"1-{CHANNEL_KEY_MAX} characters without whitespace or control characters"
_UNPRINTABLE = re.compile(r"[\s\x00-\x1f\x7f]")


def channel_key_problem(key: str) -> str | None:
    """What is wrong with ``key`` as a channel key (for INVALID_ARGUMENT), or None when it is fine."""
    if not key or len(key) > CHANNEL_KEY_MAX or _UNPRINTABLE.search(key):
        return f"channel key {key[:40]!r} is not valid: use {CHANNEL_KEY_RULE}"
    return None


def is_node_id(value: str) -> bool:
    return _NODE_ID.fullmatch(value) is not None


def queue_name_problem(queue: str) -> str | None:
    """What is wrong with ``queue`` as a queue name, or None when it is fine."""
    if not queue:
        return "queue name is empty"
    if len(queue) > QUEUE_NAME_MAX:
        return f"queue name {queue[:40]!r}... is longer than {QUEUE_NAME_MAX} characters"
    if _WHITESPACE.search(queue):
        return f"queue name {queue!r} contains whitespace or a newline"
    return None


def is_queue_name(queue: str) -> bool:
    return queue_name_problem(queue) is None


def is_task_type(value: str) -> bool:
    """A non-empty task type of at most :data:`TASK_TYPE_MAX` characters without whitespace."""
    return 0 < len(value) <= TASK_TYPE_MAX and not _WHITESPACE.search(value)
