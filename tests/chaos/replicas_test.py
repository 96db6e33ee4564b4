"""Every service as two replicas (issue 10, section 2): two schedulers, two coordinators and two
result-stores, with the workers and the SDK's clients given both addresses of each
(``LocalStack(replicas=...)``, comma-separated lists: docs/architecture.md, "Replicas").

The first test runs runs, waits for feedback and child runs over the replicas. The second SIGKILLs
one replica of each service (not restarted) while runs are in flight, a task holds a worker, a
child run and a question wait, ``WaitRun`` and ``WatchRun`` calls are open and a prober keeps
calling every service through the SDK; it asserts that no call failed on the caller's side
(retries on the other replica, watches resumed from their cursor), that no submit started two
runs and that every task body's effect happened exactly once.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from graflow import Client, parallel, workflow
from graflow.run import RunEvent
from graflow_api.v1 import scheduler_pb2, scheduler_pb2_grpc
from graflow_runtime import keys
from graflow_runtime.grpc_options import client_channel_args
from tests.chaos.conftest import Chaos, chaos_stack, wait_until
from tests.chaos.tasks import chaos_hold, chaos_spawn_held, chaos_step
from tests.e2e.tasks import add_one, ask, collect, source, spawn_child

REPLICAS = {"scheduler": 2, "coordinator": 2, "result-store": 2}
# The replicas killed in the second test (the first of each keeps the service's own name).
VICTIMS = ("scheduler-1", "coordinator-1", "result-store-1")


def fan_in(name: str, members: int, seconds: float) -> Any:
    with workflow(name) as wf:
        source(task_id="source", value=0) >> parallel(
            *[chaos_step(task_id=f"s{i}", i=i, seconds=seconds) for i in range(members)]
        ) >> collect
    return wf


def small(name: str) -> Any:
    with workflow(name) as wf:
        source(task_id="a", value=1) >> add_one(task_id="b")
    return wf


def created_runs(chaos: Chaos, service: str) -> int:
    """How many runs the scheduler process ``service`` created (its "run created" log lines)."""
    with chaos.stack.log_path(service).open() as log:
        lines = (json.loads(line) for line in log if line.startswith("{"))
        return sum(1 for line in lines if line.get("event") == "run created")


def answer_when_asked(client: Client, run_id: str) -> None:
    wait_until(lambda: len(client.list_feedback(run_id)) == 1, 30, f"the question of run {run_id}")
    (request,) = client.list_feedback(run_id)
    client.respond_feedback(run_id, request.request_id, approved=True, responded_by="replica-test")


def test_runs_waits_and_child_runs_complete_over_two_replicas_of_each_service():
    with chaos_stack(replicas=REPLICAS) as chaos:
        assert "," in chaos.stack.scheduler_address  # the clients are given both replicas
        client = chaos.client
        fan_ins = [fan_in(f"fan-in-{i}", 20, 0.0) for i in range(6)]
        runs = [(client.submit(wf), wf) for wf in fan_ins]
        with workflow("approval") as asking:
            ask(task_id="approve") >> source(task_id="after", value=7)
        with workflow("parent") as parent:
            spawn_child(task_id="spawn", n=3)
        waiting, spawning = client.submit(asking), client.submit(parent)
        answer_when_asked(client, waiting.id)
        for run, wf in runs:
            assert run.result(timeout=30) == {"count": 20, "total": sum(range(20))}
            chaos.assert_effects_once(run.id, wf.spec())
            chaos.assert_run_state_once(run.id, wf.spec())
        assert waiting.result(timeout=30) == 7
        assert waiting.results(["approve"])["approve"]["approved"] is True
        assert spawning.result(timeout=30) == 40  # (3 + 1) * 10 from the child run
        chaos.assert_effects_once(waiting.id, asking.spec())
        chaos.assert_effects_once(spawning.id, parent.spec())
        # Both schedulers created runs: the client's submits were balanced over the replicas.
        counts = [created_runs(chaos, name) for name in ("scheduler", "scheduler-1")]
        assert sum(counts) == len(runs) + 3 and min(counts) >= 1, counts  # + approval, parent, child
        # Each SDK submit carried a key of its own, and the same request again (what gRPC's retry
        # sends to the other replica) returns the run the first attempt created.
        first, wf = runs[0]
        key = chaos.bus.hget(keys.run_meta(first.id), "idem").decode()
        assert key.startswith("sdk-")
        assert len({chaos.bus.hget(keys.run_meta(run.id), "idem") for run, _ in runs}) == len(runs)
        target, options = client_channel_args(chaos.stack.scheduler_address)
        with grpc.insecure_channel(target, options=options) as channel:
            request = scheduler_pb2.SubmitRunRequest(spec=wf.spec(), idempotency_key=key)
            for _ in range(2):  # round robin: one call per replica
                again = scheduler_pb2_grpc.SchedulerStub(channel).SubmitRun(request, timeout=10)
                assert (again.run_id, again.created) == (first.id, False)
        assert sum(created_runs(chaos, name) for name in ("scheduler", "scheduler-1")) == sum(counts)


class Prober:
    """Calls every service through the SDK in a thread until stopped, recording each failure:
    reads of runs, results and feedback, workers (coordinator), and a new small run per round."""

    def __init__(self, chaos: Chaos, watched: list[str]) -> None:
        self.chaos = chaos
        self.watched = watched
        self.errors: list[str] = []
        self.submitted: list[Any] = []
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prober", daemon=True)

    def _loop(self) -> None:
        with self.chaos.stack.client(timeout=20) as client, self.chaos.stack.operators(timeout=20) as ops:
            calls: list[Callable[[], object]] = [
                lambda: client.get_run(self.watched[self.rounds % len(self.watched)]),
                lambda: client.list_runs(limit=5),
                lambda: client.get_results(self.watched[0], ["source"]),
                lambda: client.list_feedback(),
                lambda: ops.workers(),
                lambda: self.submitted.append(client.submit(small(f"probe-{self.rounds}"))),
            ]
            while not self._stop.is_set():
                for call in calls:
                    try:
                        call()
                    except Exception as exc:  # noqa: BLE001 - every failure is the finding
                        self.errors.append(f"{time.strftime('%X')} {type(exc).__name__}: {exc}")
                self.rounds += 1
                time.sleep(0.02)

    @contextlib.contextmanager
    def running(self) -> Iterator[Prober]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=60)


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``target`` in a thread; the dict gets its ``value`` or its ``error``."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = target()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def watch_all(chaos: Chaos, run_id: str) -> list[RunEvent]:
    """The run's events through ``WatchRun`` on a client of its own (its own channel)."""
    with chaos.stack.client(timeout=20) as client:
        return list(client.watch(run_id))


def result_of(chaos: Chaos, run_id: str) -> Any:
    """``Run.result`` (``WaitRun`` calls) on a client of its own."""
    with chaos.stack.client(timeout=20) as client:
        return client.run(run_id).result(timeout=90)


def test_one_replica_of_each_service_killed_mid_run_no_call_fails_and_no_effect_is_doubled():
    with chaos_stack(replicas=REPLICAS) as chaos:
        client = chaos.client
        fan_ins = [fan_in(f"busy-{i}", 80, 0.4) for i in range(4)]
        busy = [client.submit(wf) for wf in fan_ins]
        with workflow("held") as held_wf:
            source(task_id="source", value=1) >> chaos_hold(task_id="g", gate="replicas") >> collect
        with workflow("parent") as parent_wf:
            chaos_spawn_held(task_id="spawn", gate="replicas", value=2)
        with workflow("approval") as asking_wf:
            ask(task_id="approve") >> source(task_id="after", value=7)
        held, parent, asking = (client.submit(wf) for wf in (held_wf, parent_wf, asking_wf))
        chaos.wait_marks("started", held.id, "g")
        wait_until(lambda: len(client.list_feedback(asking.id)) == 1, 30, "the question")
        # Open calls when the replicas die: watches (WatchRun) and waits (WaitRun).
        watched = [run.id for run in (*busy, held, parent)]
        watches = [in_thread(lambda run_id=run_id: watch_all(chaos, run_id)) for run_id in watched]
        waits = [in_thread(lambda run_id=run.id: result_of(chaos, run_id)) for run in (held, parent, asking)]
        with Prober(chaos, watched).running() as prober:
            wait_until(lambda: sum(len(chaos.effects(r.id)) for r in busy) >= 60, 30, "60 members done")
            for victim in VICTIMS:
                chaos.stack.process(victim).send(signal.SIGKILL)
            rounds_at_kill = prober.rounds
            wait_until(lambda: prober.rounds >= rounds_at_kill + 20, 60, "20 prober rounds after the kill")
            chaos.open_gate("replicas")
            answer_when_asked(client, asking.id)
            for thread, _ in [*watches, *waits]:
                thread.join(timeout=90)
        assert all(not chaos.stack.process(victim).running for victim in VICTIMS)
        assert prober.errors == [], prober.errors
        assert prober.rounds >= rounds_at_kill + 20

        expected = {"count": 80, "total": sum(range(80))}
        for run, wf in zip(busy, fan_ins, strict=True):
            assert run.result(timeout=10) == expected
            chaos.assert_effects_once(run.id, wf.spec())
            chaos.assert_run_state_once(run.id, wf.spec())
        assert [outcome for _, outcome in waits] == [{"value": {"count": 1, "total": 2}}, {"value": 30},
                                                     {"value": 7}]
        for run, wf in ((held, held_wf), (parent, parent_wf), (asking, asking_wf)):
            chaos.assert_effects_once(run.id, wf.spec())
        # Every watch saw its run's whole history once, in order, through the kill.
        for run_id, (_, outcome) in zip(watched, watches, strict=True):
            assert "error" not in outcome, outcome
            assert [e.cursor for e in outcome["value"]] == [e.cursor for e in chaos.history(run_id)]
        # No submit started two runs: the runs are exactly those submitted, plus parent's child.
        for run in prober.submitted:
            assert run.created and run.result(timeout=30) == 2
            chaos.assert_effects_once(run.id, small("probe").spec())
        submitted = {r.id for r in (*busy, held, parent, asking, *prober.submitted)}
        listed = {r.run_id for r in client.list_runs(limit=1000)}
        assert len(listed) == len(submitted) + 1 and submitted < listed
