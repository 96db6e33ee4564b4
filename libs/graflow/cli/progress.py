"""``graflow watch`` on a terminal: one live line of a run's progress, from its event history.

    run 01J...  ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━  7,512/10,002 done  3 failed  2 waiting  64 running

Counts come from the events alone (replayed from the start, so a late watch is right too): a node
is running from NODE_READY (handed to the queue) until it succeeds, fails, is skipped or waits;
NODE_ADDED adds a node to the total.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from graflow.run import RunEvent

DONE, FAILED, WAITING, RUNNING, PENDING = "done", "failed", "waiting", "running", "pending"
_EVENT_STATES = {
    RunEvent.TYPE_NODE_READY: RUNNING,
    RunEvent.TYPE_NODE_RETRYING: RUNNING,
    RunEvent.TYPE_NODE_SUCCEEDED: DONE,
    RunEvent.TYPE_NODE_SKIPPED: DONE,
    RunEvent.TYPE_NODE_FAILED: FAILED,
    RunEvent.TYPE_NODE_WAITING: WAITING,
    RunEvent.TYPE_NODE_ADDED: PENDING,
}


class RunProgress:
    """The state of every node of a run, as its events tell it."""

    def __init__(self, node_ids: Iterable[str]) -> None:
        self.states = dict.fromkeys(node_ids, PENDING)

    def apply(self, event: RunEvent) -> None:
        state = _EVENT_STATES.get(event.type)
        # NODE_ADDED only adds: its event may come after the node's own first events.
        if state is not None and event.node_id and (state != PENDING or event.node_id not in self.states):
            self.states[event.node_id] = state

    def counts(self) -> Counter[str]:
        return Counter(self.states.values())

    def summary(self) -> str:
        counts = self.counts()
        return (
            f"{counts[DONE]}/{len(self.states)} done  {counts[FAILED]} failed  "
            f"{counts[WAITING]} waiting  {counts[RUNNING]} running"
        )


def show_progress(run_id: str, events: Iterable[RunEvent], progress: RunProgress, console: Console) -> None:
    """Follow ``events`` until they end, redrawing the progress line (transient: gone at the end)."""
    bar = Progress(
        TextColumn(f"run {run_id}"),
        BarColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=True,
    )
    with bar:
        task = bar.add_task(progress.summary(), total=len(progress.states))
        for event in events:
            progress.apply(event)
            bar.update(
                task,
                description=progress.summary(),
                total=len(progress.states),
                completed=progress.counts()[DONE],
            )
