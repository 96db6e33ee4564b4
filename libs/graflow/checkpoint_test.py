"""TaskContext checkpoints: stored through the backend, fetched lazily and once."""

from __future__ import annotations

from typing import Any

import pytest

from graflow.context import Channel, TaskContext


class Store:
    def __init__(self, saved: dict[str, Any] | None = None) -> None:
        self.saved = dict(saved or {})
        self.gets = 0

    def put_checkpoint(self, node_id: str, state: Any) -> None:
        self.saved[node_id] = state

    def get_checkpoint(self, node_id: str) -> tuple[bool, Any]:
        self.gets += 1
        return (node_id in self.saved, self.saved.get(node_id))


def context(store: Store | None) -> TaskContext:
    return TaskContext(run_id="r", node_id="n", task_type="t", attempt=2, max_attempts=3, worker_id="w",
                       channel=Channel(None), checkpoints=store)  # type: ignore[arg-type]


def test_last_checkpoint_is_fetched_only_when_asked_and_only_once():
    store = Store({"n": {"done": 3}})
    ctx = context(store)
    assert store.gets == 0
    assert ctx.last_checkpoint == {"done": 3}
    assert ctx.restore() == {"done": 3}
    assert store.gets == 1


def test_checkpoint_stores_the_state_and_later_reads_see_it_without_a_fetch():
    store = Store()
    ctx = context(store)
    ctx.checkpoint({"done": 1})
    assert store.saved == {"n": {"done": 1}}
    assert ctx.last_checkpoint == {"done": 1}
    assert store.gets == 0


def test_no_checkpoint_gives_none_or_the_default():
    ctx = context(Store())
    assert ctx.last_checkpoint is None
    assert ctx.restore({"done": 0}) == {"done": 0}


def test_checkpoints_without_a_backend_say_so():
    with pytest.raises(RuntimeError, match="result-store"):
        context(None).checkpoint(1)
