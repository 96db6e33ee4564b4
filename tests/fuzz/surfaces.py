"""The surfaces the fuzzing reaches, the verdict on one answer, and the health of the stack: shared
by the fuzz script (``fuzz.py``) and the property tests (``properties_test.py``).

An input reaches a service over gRPC (``submit``: SubmitRun; ``channel``: the result-store's
Channel* calls; ``feedback``: RespondFeedback; ``deadletters``: ListDeadLetters and
ReplayDeadLetters; ``other``: every other unary RPC, its request filled from its descriptor) or
the bus (``envelope``: an entry of the default queue's stream, read by the workers; ``outcome``: an
entry of ``gf:outcomes``, read by the scheduler). An RPC's answer is well formed when it is OK or
one of :data:`REFUSALS` with a message; UNKNOWN, INTERNAL, UNAVAILABLE (a service that died or
stalled) or any other code is a crash, no answer within :data:`TIMEOUT_S` a hang. A bus input has
no answer: the stack must consume it (``bus_backlog``), keep every process alive and log no
exception (``stack_problems``). On a stack that signs its bus, most bus inputs are signed with its
key (so that they reach the decoding), the rest are not (BadSignature).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import message_factory, text_format
from google.protobuf.message import Message

from graflow.devstack import LocalStack
from graflow_api.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    result_store_pb2,
    result_store_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from graflow_runtime import keys
from graflow_runtime.grpc_options import CHANNEL_OPTIONS
from graflow_runtime.names import DEFAULT_QUEUE
from graflow_runtime.signing import UNSIGNED, BusKeys, Kind
from graflow_runtime.testing import hostile
from tests.e2e.conftest import log_records

TIMEOUT_S = 10.0
TASK_TYPES = ("echo", "ask")
SURFACES = ("submit", "channel", "feedback", "deadletters", "envelope", "outcome", "other")
# The codes a refusal may carry (docs/security.md): each with a message naming the problem.
REFUSALS = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
})
# The ``other`` surface: every other unary RPC (WaitRun waits by design), its request filled from its
# descriptor (graflow_runtime.testing.hostile.message): (service, method, request class).
_OWN_SURFACE = {"SubmitRun", "RespondFeedback", "ListDeadLetters", "ReplayDeadLetters", "WaitRun",
                "ChannelGet", "ChannelSet", "ChannelDelete", "ChannelKeys", "ChannelUpdate"}
OTHER_RPCS = [
    (service, method.name, message_factory.GetMessageClass(method.input_type))
    for service, module in (("scheduler", scheduler_pb2), ("result-store", result_store_pb2),
                            ("coordinator", coordinator_pb2))
    for definition in module.DESCRIPTOR.services_by_name.values()
    for method in definition.methods
    if method.name not in _OWN_SURFACE and not (method.client_streaming or method.server_streaming)
]
# Stream, consumer group, message field and signed kind of each bus surface.
BUS = {
    "envelope": (keys.queue_stream(DEFAULT_QUEUE), "workers", keys.ENVELOPE_FIELD, Kind.ENVELOPE),
    "outcome": (keys.OUTCOMES_STREAM, "scheduler", keys.OUTCOME_FIELD, Kind.OUTCOME),
}
# Share of the bus inputs signed with the stack's key when it signs: the rest tests the check.
SIGNED_SHARE = 0.8
STUBS = {
    "scheduler": scheduler_pb2_grpc.SchedulerStub,
    "result-store": result_store_pb2_grpc.ResultStoreStub,
    "coordinator": coordinator_pb2_grpc.CoordinatorStub,
}


@dataclass
class Pools:
    """What exists in the stack, so that a share of the inputs reaches stored state: run ids,
    open feedback requests (run id, request id), dead-letter ids."""

    runs: list[str] = field(default_factory=list)
    waits: list[tuple[str, str]] = field(default_factory=list)
    dead_letters: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Input:
    surface: str
    service: str  # a key of STUBS, or "bus"
    method: str  # the RPC, or the stream the entry is appended to
    request: Any  # a request message, or the entry's bytes
    signed: bool = False  # a bus entry signed with the stack's key (when it has one)

    def describe(self, limit: int = 300) -> str:
        """The input on one line, cut at ``limit`` characters."""
        if isinstance(self.request, Message):
            body = text_format.MessageToString(self.request, as_one_line=True, as_utf8=True)
        else:
            body = repr(self.request)
        text = f"{self.method} {body}"
        return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def draw(surface: str, rng: random.Random, pools: Pools) -> Input:
    """One input of ``surface``."""
    if surface == "submit":
        return Input(surface, "scheduler", "SubmitRun", hostile.submit_request(rng, TASK_TYPES, pools.runs))
    if surface == "channel":
        method, request = hostile.channel_call(rng, pools.runs)
        return Input(surface, "result-store", method, request)
    if surface == "feedback":
        answer = hostile.feedback_answer(rng, pools.waits, pools.runs)
        return Input(surface, "scheduler", "RespondFeedback", answer)
    if surface == "deadletters":
        method, request = hostile.dead_letter_call(rng, pools.dead_letters)
        return Input(surface, "coordinator", method, request)
    if surface == "other":
        service, method, request_class = rng.choice(OTHER_RPCS)
        return Input(surface, service, method, hostile.message(rng, request_class, pools.runs))
    make = hostile.envelope if surface == "envelope" else hostile.outcome
    message = make(rng, TASK_TYPES, pools.runs).SerializeToString()
    signed = rng.random() < SIGNED_SHARE
    return Input(surface, "bus", BUS[surface][0], hostile.bus_bytes(rng, message), signed)


def bus_signer(stack: LocalStack) -> BusKeys:
    """The keys that sign the stack's bus messages (``LocalStack(signing=True)``), or none."""
    if not stack.signing_key:
        return UNSIGNED
    return BusKeys.from_settings([stack.signing_key], stack.signing_key.partition(":")[0])


def bus_fields(item: Input, signer: BusKeys) -> dict[bytes, bytes]:
    """The stream entry of a bus input: its bytes, and their signature when it is signed."""
    _stream, _group, field, kind = BUS[item.surface]
    return {field: item.request, **(signer.sign_fields(kind, item.request) if item.signed else {})}


def verdict(code: grpc.StatusCode, details: str | None) -> str | None:
    """None when an RPC's answer is well formed; else ``"hang"`` or ``"crash"``."""
    if code == grpc.StatusCode.OK or (code in REFUSALS and details):
        return None
    return "hang" if code == grpc.StatusCode.DEADLINE_EXCEEDED else "crash"


def open_channels(stack: LocalStack, insecure_channel: Callable[..., Any]) -> dict[str, Any]:
    """A channel to each server of the stack (``grpc.insecure_channel`` or its aio twin), with the
    options every Graflow client uses (64 MiB messages)."""
    return {service: insecure_channel(stack.address(service), options=CHANNEL_OPTIONS) for service in STUBS}


def stubs_of(channels: Mapping[str, Any]) -> dict[str, Any]:
    return {service: STUBS[service](channel) for service, channel in channels.items()}


def processes(stack: LocalStack) -> dict[str, Any]:
    """Every service process of the stack by name (``scheduler``, ``worker-0``...)."""
    return {**stack.servers, **{worker.name: worker for worker in stack.workers}}


def stack_problems(stack: LocalStack) -> list[str]:
    """Processes that died and exceptions in the services' logs, one line each."""
    problems = []
    for name, process in processes(stack).items():
        if not process.running:
            problems.append(f"{name} died (exit code {process.popen.returncode})")
        for record in log_records(stack, name):
            if "exception" in record or record.get("level") == "critical":
                problems.append(f"{name} logged {record.get('level')} {record.get('event')!r}: "
                                f"{_exception_line(record.get('exception'))}")
    return problems


def _exception_line(exception: Any) -> str:
    """The last frame and message of a structlog ``dict_tracebacks`` exception."""
    if not isinstance(exception, list) or not exception:
        return str(exception)[:300]
    last = exception[-1]
    frames = last.get("frames") or [{}]
    frame = frames[-1]
    return (f"{last.get('exc_type')}: {str(last.get('exc_value'))[:200]} "
            f"at {Path(str(frame.get('filename', '?'))).name}:{frame.get('lineno')}")


def peak_rss(stack: LocalStack) -> dict[str, int]:
    """Peak resident memory (bytes, the kernel's VmHWM) of every live service process."""
    peaks = {}
    for name, process in processes(stack).items():
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
        except (OSError, TypeError):
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks[name] = int(line.split()[1]) * 1024
    return peaks
