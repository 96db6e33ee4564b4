"""Key layout: every key of one run carries the same Redis Cluster hash tag; with cells, every key
of a cell (run keys, queue lanes, outcome stream, indexes) carries the cell's tag."""

from __future__ import annotations

from collections import Counter

import pytest
from redis.crc import key_slot

from graflow_runtime import keys, runids
from graflow_runtime.testing.slots import four_cells  # noqa: F401 - fixture


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the text inside the first non-empty ``{...}``, else the key."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


@pytest.mark.parametrize("run_id", ["r1", "01J9ZQ4M5K-abc", "a.b_c-d"])
def test_all_keys_of_a_run_share_the_run_id_hash_tag(run_id: str) -> None:
    run_scoped = [*keys.run_keys(run_id), *keys.run_flow_keys(run_id), keys.dispatch_record(run_id),
                  keys.results(run_id), keys.result_attempts(run_id), keys.channel(run_id)]
    assert len(set(run_scoped)) == len(run_scoped)
    assert {hash_tag(key) for key in run_scoped} == {run_id}


def test_global_keys_have_no_hash_tag_and_share_the_prefix() -> None:
    global_keys = [keys.OUTCOMES_STREAM, keys.DEAD_LETTERS_STREAM, keys.RUNS_INDEX, keys.ACTIVE_RUNS,
                   keys.RETRY_TIMER, keys.WORKERS_INDEX, keys.RUNS_ENDED, keys.FEEDBACK_PENDING,
                   keys.WAIT_DEADLINES, keys.CHILDREN_ENDED, keys.CHILDREN_TO_CANCEL,
                   keys.queue_stream("default"), keys.queue_high_stream("default"), keys.idempotency("k", 0),
                   keys.worker_info("w1"),
                   keys.graph("ab" * 32)]
    for key in global_keys:
        assert "{" not in key, key
        assert key.startswith(f"{keys.PREFIX}:"), key
    assert keys.queue_stream("gpu") == "gf:q:gpu"


def test_a_queue_high_lane_is_not_the_normal_lane_of_any_valid_queue_name() -> None:
    normal_prefix = keys.queue_stream("")
    for queue in ["default", "gpu", "h:default", "qh:default", ":default"]:
        high = keys.queue_high_stream(queue)
        # Any key under the normal prefix names the queue after it; none of these keys is under it.
        assert not high.startswith(normal_prefix), high
    assert keys.queue_lanes("gpu") == ("gf:qh:gpu", "gf:q:gpu")


def cell_keys(cell: int) -> list[str]:
    return [keys.outcomes_stream(cell), keys.dead_letters_stream(cell), keys.runs_index(cell),
            keys.active_runs(cell), keys.feedback_pending(cell), keys.wait_deadlines(cell),
            keys.children_ended(cell), keys.children_to_cancel(cell), keys.runs_ended(cell),
            keys.retry_timer(cell), keys.retry_wake(cell), keys.idempotency("k", cell),
            *keys.queue_lanes("default", cell), keys.feedback_opened(cell)]


def test_the_default_layout_names_the_single_redis_keys() -> None:
    assert keys.layout() == keys.Layout()
    assert cell_keys(0) == [keys.OUTCOMES_STREAM, keys.DEAD_LETTERS_STREAM, keys.RUNS_INDEX,
                            keys.ACTIVE_RUNS, keys.FEEDBACK_PENDING, keys.WAIT_DEADLINES,
                            keys.CHILDREN_ENDED, keys.CHILDREN_TO_CANCEL, keys.RUNS_ENDED,
                            keys.RETRY_TIMER, keys.RETRY_WAKE, "gf:idem:k", "gf:qh:default", "gf:q:default",
                            "gf:feedback:opened"]
    assert keys.run_meta("R") == "gf:run:{R}"
    assert keys.workers_index() == keys.WORKERS_INDEX
    assert keys.cells() == range(1)


def test_every_key_of_a_cell_and_of_its_runs_is_in_one_slot(four_cells: keys.Layout) -> None:  # noqa: F811 - fixture
    slots = []
    for cell in keys.cells():
        run_id = runids.new_run_id(cell=cell)
        assert keys.cell_of(run_id) == cell
        run_scoped = [*keys.run_keys(run_id), *keys.run_flow_keys(run_id), keys.dispatch_record(run_id),
                      keys.results(run_id), keys.result_attempts(run_id), keys.channel(run_id),
                      keys.checkpoints(run_id)]
        in_cell = {key_slot(key.encode()) for key in [*cell_keys(cell), *run_scoped]}
        assert len(in_cell) == 1, (cell, in_cell)
        slots.append(in_cell.pop())
    # Cell i lies in the i-th quarter of the slots: 3 primaries get 2, 1 and 1 cells, never 4 and 0.
    assert [slot * 4 // 16384 for slot in slots] == [0, 1, 2, 3]
    assert len({*cell_keys(0), *cell_keys(1)}) == 2 * len(cell_keys(0))


def test_the_worker_registry_shares_one_slot_when_tagged(four_cells: keys.Layout) -> None:  # noqa: F811 - fixture
    assert key_slot(keys.workers_index().encode()) == key_slot(keys.worker_info("w-1").encode())


def test_runs_spread_over_the_cells(four_cells: keys.Layout) -> None:  # noqa: F811 - fixture
    spread = Counter(keys.cell_of(runids.new_run_id()) for _ in range(4000))
    assert set(spread) == {0, 1, 2, 3}
    assert min(spread.values()) > 800


def test_one_cell_on_a_cluster_is_tagged_and_the_layout_is_bounded() -> None:
    assert keys.Layout(cells=1, cluster=True).prefixes[0].startswith("gf:{c0.")
    assert keys.Layout(cells=1, cluster=True).describe() == "cells=1 tagged=1"
    assert keys.Layout(cells=1, cluster=False).describe() == "cells=1 tagged=0"
    with pytest.raises(ValueError, match="between 1 and 1024"):
        keys.Layout(cells=0)
