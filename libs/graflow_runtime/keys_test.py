"""Key layout: every key of one run carries the same Redis Cluster hash tag."""

from __future__ import annotations

import pytest

from graflow_runtime import keys


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
                   keys.queue_stream("default"), keys.queue_high_stream("default"), keys.idempotency("k"),
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
