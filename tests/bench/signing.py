"""Benchmark: the CPU that signing costs per task, in the processes that do it (no stack).

    ./pants run tests/bench/signing.py -- [--tasks 100000]

One task's messages are signed and verified four times in all: its envelope signed by the
scheduler (dispatch) and verified by the worker, its outcome signed by the worker and verified by
the scheduler (graflow_runtime.signing). This times exactly those calls on an envelope and an
outcome shaped like a fan-out member's (a small inline result), and prints the microseconds per
task. The whole stack's figure, signing on against off in the same window, comes from
``throughput.py --only fanout [--signing]``.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time

from graflow_api.v1 import common_pb2, messages_pb2, result_store_pb2
from graflow_runtime.signing import BusKeys, Kind


def messages() -> tuple[bytes, bytes]:
    run_id = "01JEXAMPLE0000000000000000"
    envelope = messages_pb2.TaskEnvelope(
        run_id=run_id, node_id="unit.1234", task_type="tests.bench.tasks.unit", attempt=1,
        args_json=b'{"i": 1234}', input_node_ids=["start"], queue="default", max_attempts=3,
        trace_context={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
    )
    result = result_store_pb2.NodeResult(
        run_id=run_id, node_id="unit.1234", attempt=1,
        value=common_pb2.Payload(data=b"1234", content_type="application/json"),
    )
    outcome = messages_pb2.TaskOutcome(
        run_id=run_id, node_id="unit.1234", attempt=1, status=messages_pb2.TaskOutcome.STATUS_SUCCEEDED,
        worker_id="host-1234-abcd", started_at_ms=1, finished_at_ms=2, has_result=True, result=result,
    )
    return envelope.SerializeToString(), outcome.SerializeToString()


def per_task_us(tasks: int) -> float:
    keys = BusKeys.from_settings([f"k1:{secrets.token_hex(32)}"], "k1")
    envelope, outcome = messages()
    start = time.process_time()
    for _ in range(tasks):
        signed = keys.sign_fields(Kind.ENVELOPE, envelope)  # scheduler
        keys.fields_problem(Kind.ENVELOPE, envelope, signed)  # worker
        signed = keys.sign_fields(Kind.OUTCOME, outcome)  # worker
        keys.fields_problem(Kind.OUTCOME, outcome, signed)  # scheduler
    return (time.process_time() - start) / tasks * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=100_000)
    args = parser.parse_args(argv)
    envelope, outcome = messages()
    figures = sorted(per_task_us(args.tasks) for _ in range(3))
    sys.stdout.write(
        f"signing CPU per task (2 signatures + 2 checks; envelope {len(envelope)} B, outcome "
        f"{len(outcome)} B): median {figures[1]:.2f} us (min {figures[0]:.2f}, max {figures[2]:.2f}) "
        f"over {args.tasks} tasks x 3\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
