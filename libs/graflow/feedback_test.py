"""TaskContext questions: ids, answers from the envelope, waits, and the checks made before asking."""

from __future__ import annotations

import pytest

from graflow.context import Channel, TaskContext
from graflow.feedback import WaitRequested, build_request, build_response
from graflow_api.v1 import feedback_pb2


def context(*answers: feedback_pb2.FeedbackResponse, cycle: int = 0) -> TaskContext:
    return TaskContext(
        run_id="r",
        node_id="n",
        task_type="t",
        attempt=2,
        max_attempts=3,
        worker_id="w",
        channel=Channel(None),
        cycle=cycle,  # type: ignore[arg-type]
        feedback={a.request_id: a for a in answers},
    )


def test_questions_are_numbered_per_cycle_and_answered_from_the_envelope() -> None:
    ctx = context(feedback_pb2.FeedbackResponse(request_id="n.1.1", text="ada"), cycle=1)
    assert ctx.request_text_input("name?") == "ada"
    with pytest.raises(WaitRequested) as waiting:
        ctx.request_selection("color?", ["red", "blue"], timeout=60, metadata={"ui": "radio"})
    request = waiting.value.wait.feedback
    assert (request.request_id, request.kind, list(request.options)) == (
        "n.1.2",
        feedback_pb2.FEEDBACK_KIND_SELECTION,
        ["red", "blue"],
    )
    assert (request.timeout_ms, request.metadata_json) == (60_000, b'{"ui":"radio"}')


def test_an_own_feedback_id_is_not_counted_and_may_be_used_once_per_run_of_the_task() -> None:
    ctx = context(feedback_pb2.FeedbackResponse(request_id="q", approved=True))
    assert ctx.request_approval("ship?", feedback_id="q") is True
    with pytest.raises(ValueError, match="'q' was used by an earlier question"):
        ctx.request_approval("ship again?", feedback_id="q")
    with pytest.raises(WaitRequested) as waiting:
        ctx.request_approval("and this?")
    assert waiting.value.wait.feedback.request_id == "n.0.1"


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"feedback_type": "poll"}, "is not one of approval"),
        ({"prompt": " "}, "needs a prompt"),
        ({"feedback_type": "selection"}, "needs options"),
        ({"timeout": 0}, "between 0.001 s and 49.7 days"),
        ({"on_timeout": "pause"}, "is not one of fail, keep_waiting"),
    ],
)
def test_a_bad_question_fails_the_task_before_anything_is_asked(kwargs: dict, problem: str) -> None:
    args = {"feedback_type": "approval", "prompt": "ok?", **kwargs}
    with pytest.raises(ValueError, match=problem):
        build_request("n.0.1", args.pop("feedback_type"), args.pop("prompt"), **args)


def test_an_answer_sets_only_what_was_given_and_none_is_json_null() -> None:
    assert not build_response(text="x").HasField("approved")
    assert build_response(approved=False).HasField("approved")
    assert build_response(custom_data=None).custom_json == b"null"
    assert build_response().custom_json == b""
