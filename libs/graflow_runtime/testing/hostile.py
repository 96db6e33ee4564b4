"""Hostile inputs for the surfaces a caller or the bus reaches, drawn from a ``random.Random``.

One generator per surface, used twice: by the hypothesis properties (``st.randoms()`` gives a
Random whose draws hypothesis controls, replays and shrinks) and by the fuzz script
(``tests/fuzz``), which needs a million inputs quickly and draws from a seeded Random itself.
Inputs are mostly valid-looking, so that they reach past the first check: real ids, JSON objects,
messages that parse; then one thing is wrong (a size, a nesting, a number, a reference, a cycle,
bytes truncated or flipped). ``pool`` arguments name things that exist (run ids of real runs,
dead-letter ids), so that a share of the inputs hits stored state.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from graflow_api.v1 import (
    common_pb2,
    coordinator_pb2,
    feedback_pb2,
    messages_pb2,
    result_store_pb2,
    scheduler_pb2,
    workflow_pb2,
)
from graflow_runtime.limits import MAX_JSON_DEPTH
from graflow_runtime.runids import _ALPHABET

Rng = random.Random

_WEIRD = [
    "", " ", "\n", "a\n", "1-0\n", "\x00", "a\x00b", "\t", "é", "𝔘𝔫𝔦", "\u202eevil", "日本語", "🦀",
    "a b", "a:b", "a/b", "@x", "child:x", "..", "-", "{tag}", "*", "%s", "\\", "'\"", "\x7f", "\ufeff",
]
_UINT32 = [0, 1, 2, 3, 100, 1000, 2**31 - 1, 2**31, 2**32 - 1]
_INT32 = [-(2**31), -1, 0, 1, 5, 2**31 - 1]
_DOUBLES = [0.0, -0.0, 0.5, 1.0, 1.5, 2.0, -1.0, 1e308, 5e-324, float("nan"), float("inf"), float("-inf")]


def identifier(rng: Rng) -> str:
    """A valid node id, queue name or channel key."""
    return rng.choice(["a", "b", "node", "x.y", "n-1", "_", "A9"]) + str(rng.randrange(50))


def text(rng: Rng) -> str:
    """A string: a valid identifier, an odd or overlong one, or random characters (never lone
    surrogates: protobuf strings are UTF-8)."""
    roll = rng.random()
    if roll < 0.55:
        return identifier(rng)
    if roll < 0.75:
        return rng.choice(_WEIRD)
    if roll < 0.85:
        return rng.choice("aZ9.-_é\n") * rng.choice([27, 129, 201, 257, 1025, 5000])
    return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0, 0xD800)]))
                   for _ in range(rng.randrange(1, 40)))


def run_id(rng: Rng, pool: Sequence[str] = ()) -> str:
    """A run id: an existing one, a well-formed unknown one, or a malformed one."""
    roll = rng.random()
    if pool and roll < 0.5:
        return rng.choice(pool)
    if roll < 0.75:
        return "".join(rng.choice(_ALPHABET) for _ in range(26))
    return text(rng)


def uint32(rng: Rng) -> int:
    return rng.choice(_UINT32) if rng.random() < 0.7 else rng.randrange(2**32)


def random_bytes(rng: Rng, max_len: int = 200) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(max_len)))


def _nested(depth: int, rng: Rng) -> str:
    opening, closing = rng.choice([("[", "]"), ('{"k":', "}")])
    return opening * depth + "1" + closing * depth


def json_bytes(rng: Rng) -> bytes:
    """JSON a user sends: mostly an object, else too deep, not finite, huge, not JSON or not UTF-8."""
    roll = rng.random()
    if roll < 0.4:
        value = {identifier(rng): rng.choice([1, "s", None, True, [1, 2], {"n": 2.5}, text(rng)])
                 for _ in range(rng.randrange(4))}
        return json.dumps(value).encode()
    choices = [
        lambda: _nested(rng.choice([MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 1000, 10**5]),
                        rng),
        lambda: rng.choice(['{"a": NaN}', '{"a": 1e400}', '{"a": -Infinity}', '{"a": -1e999}', "[Infinity]"]),
        lambda: '{"a": ' + "9" * rng.choice([4300, 4301, 20_000]) + "}",
        lambda: rng.choice(["[]", '"s"', "1", "null", "true", '{"a":1,"a":2}', "{", '{"a":}', "", " "]),
        lambda: '{"a": "' + "x" * rng.choice([1000, 70_000]) + '"}',
        lambda: '{"\\ud800": "\\udfff"}',
    ]
    if roll < 0.9:
        return rng.choice(choices)().encode()
    return rng.choice([b"\xff\xfe", b'{"a": "\xc3"}', random_bytes(rng, 64)])


def payload(rng: Rng) -> common_pb2.Payload:
    content_type = rng.choice(["application/json", "application/json", "", "text/plain",
                               "application/octet-stream", text(rng)])
    data = json_bytes(rng) if rng.random() < 0.8 else random_bytes(rng)
    return common_pb2.Payload(content_type=content_type, data=data)


def mutate(rng: Rng, data: bytes) -> bytes:
    """``data`` truncated, with bytes flipped, inserted, or repeated."""
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(5)
        at = rng.randrange(len(buf) + 1)
        if op == 0:
            del buf[at:]
        elif op == 1 and buf:
            buf[min(at, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 2:
            buf[at:at] = random_bytes(rng, 8)
        elif op == 3:
            buf[at:at] = buf[at:at + rng.randrange(1, 16)] * rng.randrange(2, 5)
        else:
            buf[at:at] = bytes([rng.choice([0x0A, 0x12, 0x22, 0x80, 0xFF])]) + b"\xff" * rng.randrange(10)
    return bytes(buf)


def retry_policy(rng: Rng) -> common_pb2.RetryPolicy:
    odd = rng.random() < 0.3
    return common_pb2.RetryPolicy(
        max_attempts=rng.choice([0, 1, 3, 100, 101, 2**32 - 1] if odd else [0, 1, 3]),
        initial_interval_ms=uint32(rng) if odd else rng.choice([0, 10, 1000]),
        backoff_factor=rng.choice(_DOUBLES if odd else [0.0, 1.0, 2.0]),
        max_interval_ms=uint32(rng) if odd else rng.choice([0, 60_000]),
        jitter=rng.choice(_DOUBLES if odd else [0.0, 0.2, 1.0]),
    )


def node_spec(rng: Rng, node_id: str, task_types: Sequence[str]) -> workflow_pb2.NodeSpec:
    node = workflow_pb2.NodeSpec(
        id=node_id,
        task_type=rng.choice(task_types) if task_types and rng.random() < 0.9 else text(rng),
        args_json=(b"{}" if rng.random() < 0.7 else json_bytes(rng)) if rng.random() < 0.5 else b"",
        queue=rng.choice(["", "", "", "default", text(rng)]),
        priority=rng.choice(_INT32),
    )
    if rng.random() < 0.2:
        node.timeout_ms, node.max_cycles = uint32(rng), uint32(rng)
    if rng.random() < 0.1:
        node.retry.CopyFrom(retry_policy(rng))
    return node


def _odd(rng: Rng, share: float = 0.05) -> bool:
    """Whether to make this part of an input wrong (rarely, so most inputs get past it)."""
    return rng.random() < share


def workflow_spec(rng: Rng, task_types: Sequence[str] = ()) -> workflow_pb2.WorkflowSpec:
    """A workflow: nodes, edges among them (a share naming nothing, closing cycles or marked as
    loops), groups with policies, defaults; sizes from empty to a few thousand nodes."""
    size = rng.choice([1, 1, 2, 3, 5, 8, 20, 60]) if not _odd(rng, 0.04) else rng.choice([0, 0, 500, 3000])
    ids = list(dict.fromkeys(text(rng) if _odd(rng, 0.02) else f"n{i}" for i in range(size)))
    spec = workflow_pb2.WorkflowSpec(name=text(rng) if _odd(rng, 0.2) else "wf")
    spec.nodes.extend(node_spec(rng, node_id, task_types) for node_id in ids)
    groups = [f"g{i}" for i in range(rng.choice([0, 0, 1, 2]))] if ids else []
    for group_id in groups:
        members = rng.sample(ids, rng.randrange(0 if _odd(rng) else 1, min(len(ids), 6) + 1))
        if _odd(rng):
            members.append(rng.choice([*groups, text(rng)]))
        policy = workflow_pb2.GroupPolicy(
            kind=rng.choice([0, 1, 2, 3, 4]) if not _odd(rng) else 99,
            min_success=rng.randrange(len(members) + 2) if not _odd(rng) else uint32(rng),
        )
        policy.critical_ids.extend(rng.sample(members, min(len(members), rng.randrange(3))))
        if _odd(rng):
            policy.critical_ids.append(text(rng))
        spec.groups.add(id=group_id, member_ids=members, policy=policy)
    ends = ids + groups
    for _ in range(rng.randrange(0, 2 * len(ends) + 1) if ends else 0):
        ahead = ends.index(source := rng.choice(ends))
        forward = ends[ahead + 1:]
        if _odd(rng):  # possibly backwards: a cycle, a self edge, an edge into a group's member
            target = rng.choice(ends)
        elif forward:
            target = rng.choice(forward)
        else:
            continue
        spec.edges.add(from_id=source, to_id=text(rng) if _odd(rng, 0.02) else target, loop=_odd(rng, 0.1))
    if rng.random() < 0.3:
        spec.defaults.CopyFrom(workflow_pb2.RunDefaults(
            queue=rng.choice(["", "default", text(rng)]), timeout_ms=uint32(rng),
            max_cycles=uint32(rng), max_steps=uint32(rng),
        ))
        if rng.random() < 0.3:
            spec.defaults.retry.CopyFrom(retry_policy(rng))
    return spec


def submit_request(rng: Rng, task_types: Sequence[str] = (), runs: Sequence[str] = ()
                   ) -> scheduler_pb2.SubmitRunRequest:
    request = scheduler_pb2.SubmitRunRequest(
        idempotency_key=text(rng) if rng.random() < 0.2 else "",
        wait_ms=rng.choice([0, 0, 0, 1, 50]),
    )
    if rng.random() < 0.97:
        request.spec.CopyFrom(workflow_spec(rng, task_types))
    for _ in range(rng.choice([0, 0, 1, 3, 101])):
        request.labels[text(rng)] = text(rng)
    if rng.random() < 0.1:
        request.parent.CopyFrom(scheduler_pb2.ParentRef(run_id=run_id(rng, runs), node_id=text(rng)))
    return request


def envelope(rng: Rng, task_types: Sequence[str] = (), runs: Sequence[str] = ()) -> messages_pb2.TaskEnvelope:
    """A task envelope with plausible fields, some of them wrong."""
    env = messages_pb2.TaskEnvelope(
        run_id=run_id(rng, runs), node_id=text(rng), attempt=rng.choice([0, 1, 1, 2, 2**32 - 1]),
        task_type=rng.choice(task_types) if task_types and rng.random() < 0.7 else text(rng),
        args_json=json_bytes(rng) if rng.random() < 0.5 else b"",
        timeout_ms=rng.choice([0, 1, 1000, 2**32 - 1]), queue=text(rng), priority=rng.choice(_INT32),
        max_attempts=uint32(rng), cycle=uint32(rng), max_cycles=uint32(rng),
        iteration_data_json=json_bytes(rng) if rng.random() < 0.2 else b"",
    )
    env.input_node_ids.extend(text(rng) for _ in range(rng.choice([0, 0, 1, 3])))
    if rng.random() < 0.2:
        env.trace_context[text(rng)] = text(rng)
    if rng.random() < 0.1:
        env.feedback.add(request_id=text(rng), text=text(rng), custom_json=json_bytes(rng))
    return env


def _directive(rng: Rng, task_types: Sequence[str]) -> messages_pb2.Directive:
    kind = rng.randrange(5)
    if kind == 0:
        spec = node_spec(rng, text(rng), task_types)
        return messages_pb2.Directive(next_task=messages_pb2.NextTask(
            node_id=spec.id, task_type=spec.task_type, args_json=spec.args_json, goto=rng.random() < 0.3,
            options=spec if rng.random() < 0.5 else None))
    if kind == 1:
        return messages_pb2.Directive(next_iteration=messages_pb2.NextIteration(data_json=json_bytes(rng)))
    if kind == 2:
        return messages_pb2.Directive(goto=messages_pb2.Goto(node_id=text(rng)))
    if kind == 3:
        return messages_pb2.Directive(terminate=messages_pb2.Terminate(message=text(rng)))
    return messages_pb2.Directive(cancel=messages_pb2.Cancel(message=text(rng)))


def outcome(rng: Rng, task_types: Sequence[str] = (), runs: Sequence[str] = ()) -> messages_pb2.TaskOutcome:
    """A task outcome with plausible fields, some of them wrong (status, attempt, inline result,
    directives, a wait)."""
    item = messages_pb2.TaskOutcome(
        run_id=run_id(rng, runs), node_id=rng.choice(["n0", "n1", text(rng)]),
        attempt=rng.choice([0, 1, 1, 2, 2**32 - 1]), status=rng.choice([0, 1, 1, 2, 3, 4, 7]),
        worker_id=text(rng), has_result=rng.random() < 0.5, worker_lost=rng.random() < 0.1,
    )
    if rng.random() < 0.3:
        item.error.CopyFrom(
            common_pb2.ErrorInfo(type=text(rng), message=text(rng), retryable=rng.random() < 0.5)
        )
    item.directives.extend(_directive(rng, task_types) for _ in range(rng.choice([0, 0, 1, 2, 5])))
    if rng.random() < 0.2:
        same = rng.random() < 0.7
        item.result.CopyFrom(result_store_pb2.NodeResult(
            run_id=item.run_id if same else run_id(rng, runs), node_id=item.node_id if same else text(rng),
            attempt=item.attempt, value=payload(rng)))
    if rng.random() < 0.15:
        if rng.random() < 0.7:
            item.wait.feedback.CopyFrom(feedback_request(rng))
        else:
            item.wait.child_run_id = run_id(rng, runs)
    return item


def feedback_request(rng: Rng) -> feedback_pb2.FeedbackRequest:
    return feedback_pb2.FeedbackRequest(
        request_id=text(rng), kind=rng.choice([0, 1, 2, 3, 4, 5, 9]), prompt=text(rng),
        options=[text(rng) for _ in range(rng.choice([0, 1, 2, 3]))],
        metadata_json=json_bytes(rng) if rng.random() < 0.3 else b"",
        timeout_ms=rng.choice([0, 1, 1000, 2**32 - 1]), on_timeout=rng.choice([0, 1, 2, 5]),
    )


def bus_bytes(rng: Rng, message: bytes) -> bytes:
    """What lands in a stream entry: ``message``, ``message`` mutated, or random bytes."""
    roll = rng.random()
    if roll < 0.4:
        return message
    if roll < 0.85:
        return mutate(rng, message)
    return random_bytes(rng)


def channel_call(rng: Rng, runs: Sequence[str] = ()) -> tuple[str, object]:
    """(method, request) of one of the result-store's Channel* calls."""
    keys = [text(rng) for _ in range(rng.choice([0, 1, 1, 2, 5]))]
    run = run_id(rng, runs)
    method = rng.choice(["ChannelGet", "ChannelSet", "ChannelDelete", "ChannelKeys", "ChannelUpdate",
                         "ChannelUpdate"])
    if method == "ChannelGet":
        return method, result_store_pb2.ChannelGetRequest(run_id=run, keys=keys)
    if method == "ChannelSet":
        entries = [result_store_pb2.ChannelEntry(key=key, value=payload(rng)) for key in keys]
        return method, result_store_pb2.ChannelSetRequest(run_id=run, entries=entries, ttl_ms=uint32(rng))
    if method == "ChannelDelete":
        return method, result_store_pb2.ChannelDeleteRequest(run_id=run, keys=keys)
    if method == "ChannelKeys":
        return method, result_store_pb2.ChannelKeysRequest(run_id=run)
    return method, result_store_pb2.ChannelUpdateRequest(
        run_id=run, key=keys[0] if keys else "", operation=rng.choice([0, 1, 2, 3, 3, 8]),
        value=payload(rng), ttl_ms=uint32(rng))


def feedback_answer(rng: Rng, waits: Sequence[tuple[str, str]] = (), runs: Sequence[str] = ()
                    ) -> scheduler_pb2.RespondFeedbackRequest:
    """An answer: to a request that exists (``waits``: (run id, request id)), or to ids made up."""
    if waits and rng.random() < 0.6:
        run, request_id = rng.choice(waits)
    else:
        run, request_id = run_id(rng, runs), text(rng)
    response = feedback_pb2.FeedbackResponse(
        request_id=rng.choice(["", "", request_id, text(rng)]), reason=text(rng),
        text=text(rng) if rng.random() < 0.3 else "",
        selected=text(rng) if rng.random() < 0.2 else "", responded_by=text(rng),
        selected_multiple=[text(rng) for _ in range(rng.choice([0, 0, 2]))],
        custom_json=json_bytes(rng) if rng.random() < 0.3 else b"",
    )
    if rng.random() < 0.6:
        response.approved = rng.random() < 0.5
    return scheduler_pb2.RespondFeedbackRequest(run_id=run, request_id=request_id, response=response)


def stream_id(rng: Rng, pool: Sequence[str] = ()) -> str:
    """A dead-letter (stream entry) id: an existing one, a well-formed one, or not one."""
    roll = rng.random()
    if pool and roll < 0.3:
        return rng.choice(pool)
    if roll < 0.6:
        return rng.choice(["0-0", "1-0", "0", f"{rng.randrange(2**64)}-{rng.randrange(2**64)}", f"{2**64}-0",
                           f"{rng.randrange(2**45)}-{rng.randrange(9)}", f"{2**64 - 1}-{2**64 - 1}"])
    return rng.choice(["1-0\n", " 1-0", "1-", "-1", "1-0-0", "+", "$", "*", "٣-0", "1e3-0", "0x1-0",
                       text(rng)])


def dead_letter_call(rng: Rng, ids: Sequence[str] = ()) -> tuple[str, object]:
    """(method, request) of ListDeadLetters or ReplayDeadLetters."""
    chosen = [stream_id(rng, ids) for _ in range(rng.choice([0, 0, 1, 2, 5]))]
    if rng.random() < 0.02:
        chosen = [stream_id(rng, ids)] * 1001
    if rng.random() < 0.5:
        return "ListDeadLetters", coordinator_pb2.ListDeadLettersRequest(
            limit=uint32(rng), after_id=stream_id(rng, ids) if rng.random() < 0.5 else "", ids=chosen)
    return "ReplayDeadLetters", coordinator_pb2.ReplayDeadLettersRequest(
        ids=chosen, all=rng.random() < 0.002, after_id=stream_id(rng, ids) if rng.random() < 0.3 else "")


def message(rng: Rng, cls: type[Message], runs: Sequence[str] = (), depth: int = 0) -> Message:
    """A message of any type with its fields filled from its descriptor, each set or not: hostile
    strings (run ids in fields named ``*run_id*``), JSON or random bytes, numbers at their edges,
    enum values that exist and one that does not, nested messages, repeated fields and maps."""
    item = cls()
    for field in item.DESCRIPTOR.fields:
        if rng.random() < 0.4:
            continue
        target = getattr(item, field.name)
        count = rng.choice([1, 1, 2, 3]) if field.is_repeated else 1
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for _ in range(count):
                key = text(rng)
                if value_field.message_type is not None:
                    target[key].CopyFrom(message(rng, type(target[key]), runs, depth + 1))
                else:
                    target[key] = _scalar(rng, value_field, runs)
        elif field.message_type is not None:
            if depth < 4:
                for _ in range(count):
                    value = message(rng, type(target.add() if field.is_repeated else target), runs, depth + 1)
                    if field.is_repeated:
                        target[-1].CopyFrom(value)
                    else:
                        target.CopyFrom(value)
        elif field.is_repeated:
            target.extend(_scalar(rng, field, runs) for _ in range(count))
        else:
            setattr(item, field.name, _scalar(rng, field, runs))
    return item


def _scalar(rng: Rng, field: FieldDescriptor, runs: Sequence[str]) -> object:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return run_id(rng, runs) if "run_id" in field.name else text(rng)
    if kind == FieldDescriptor.TYPE_BYTES:
        return json_bytes(rng) if rng.random() < 0.7 else random_bytes(rng)
    if kind == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if kind == FieldDescriptor.TYPE_ENUM:
        return rng.choice([*(value.number for value in field.enum_type.values), 99])
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return rng.choice(_DOUBLES)
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return rng.choice(_INT32)
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return rng.choice([-(2**63), -1, 0, 1, 2**63 - 1])
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return rng.choice([0, 1, 2**64 - 1])
    return uint32(rng)
