"""The notification's body and headers, and the SDK's check of the signature."""

from __future__ import annotations

import json

import pytest

from graflow.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from graflow_api.v1 import feedback_pb2

from graflow_scheduler.notify.payload import (
    OPTIONS_MAX,
    PROMPT_MAX,
    build_payload,
    encode,
    feedback_url,
    headers,
)

RUN = "01JABCDEFGHJKMNPQRSTVWXYZ0"
ESCAPED = {"<": "&lt;", ">": "&gt;", "&": "&amp;", "x": "x"}


def test_the_link_quotes_each_segment_and_joins_the_base_url_with_or_without_a_slash() -> None:
    assert feedback_url("https://c.example", RUN, "a.0.1") == f"https://c.example/runs/{RUN}/feedback/a.0.1"
    quoted = feedback_url("https://c.example/x/", RUN, "a b/c?")
    assert quoted == f"https://c.example/x/runs/{RUN}/feedback/a%20b%2Fc%3F"


def test_an_approval_with_a_deadline_and_a_long_prompt() -> None:
    request = feedback_pb2.FeedbackRequest(
        run_id=RUN, request_id="r1", node_id="gate", kind=feedback_pb2.FEEDBACK_KIND_APPROVAL,
        prompt="x" * (PROMPT_MAX + 50), deadline_ms=1_800_000_000_123,
    )
    body = build_payload(request, "http://127.0.0.1:8480")
    assert body["graflow"]["kind"] == "approval" and body["graflow"]["deadline_ms"] == 1_800_000_000_123
    assert body["graflow"]["prompt"] == request.prompt  # the full prompt for programs
    section = body["blocks"][0]["text"]["text"]
    assert len(section) < 3000 and section.endswith("…")  # Slack's limit
    assert "<!date^1800000000^" in body["blocks"][1]["elements"][0]["text"]
    assert "options" not in body["blocks"][1]["elements"][0]["text"]


@pytest.mark.parametrize("char", ["<", ">", "&", "x"])
def test_markup_is_cut_after_escaping_so_slacks_limit_holds_for_any_prompt(char: str) -> None:
    # 1,907 "<" cut at 2,000 and then escaped made a 3,528-character section: Slack answers 400.
    request = feedback_pb2.FeedbackRequest(
        run_id=RUN, request_id="r1", node_id="n", prompt="ok " + char * 1907, options=[char * 400] * 3
    )
    body = build_payload(request, "http://c")
    section = body["blocks"][0]["text"]["text"]
    prompt = section.removeprefix("*Feedback requested*\n")
    assert len(prompt) <= PROMPT_MAX and len(section) <= 3000
    options = body["blocks"][1]["elements"][0]["text"].split(" · options: ")[1]
    assert len(options) <= OPTIONS_MAX and options.endswith("…")
    # Cut between entities, never inside one.
    entity = ESCAPED[char]
    for text in (prompt, options):
        kept = text.removeprefix("ok ").removesuffix("…").split(", ")[0]
        assert kept == entity * (len(kept) // len(entity))
    assert body["graflow"]["prompt"] == request.prompt


def test_short_markup_is_escaped_whole() -> None:
    request = feedback_pb2.FeedbackRequest(run_id=RUN, request_id="r1", prompt="a<b>&c")
    assert build_payload(request, "http://c")["blocks"][0]["text"]["text"].endswith("\na&lt;b&gt;&amp;c")


def test_headers_sign_the_exact_body_and_without_a_secret_carry_no_signature() -> None:
    request = feedback_pb2.FeedbackRequest(run_id=RUN, request_id="r1", prompt="é")
    body = encode(build_payload(request, "http://c"))
    assert json.loads(body)["graflow"]["prompt"] == "é"
    signed = headers(body, "s3cret", now=1_700_000_000.5)
    assert signed[TIMESTAMP_HEADER] == "1700000000"
    assert signed[SIGNATURE_HEADER].startswith("v1=")
    assert verify_signature("s3cret", "1700000000", body, signed[SIGNATURE_HEADER], now=1_700_000_100)
    # Too old for the tolerance (a replay), or a timestamp that is not a number.
    assert not verify_signature("s3cret", "1700000000", body, signed[SIGNATURE_HEADER], now=1_700_000_301)
    assert not verify_signature("s3cret", "soon", body, signed[SIGNATURE_HEADER], now=1_700_000_000)
    # Several signatures (secrets in rotation): one match is enough.
    both = f"v1=00,{signed[SIGNATURE_HEADER]}"
    assert verify_signature("s3cret", "1700000000", body, both, now=1_700_000_000)
    unsigned = headers(body, "", now=1_700_000_000)
    assert SIGNATURE_HEADER not in unsigned and unsigned["Content-Type"] == "application/json"
