"""The body and headers of a feedback notification (docs/operations.md, "Feedback notifications").

The body is what a Slack incoming webhook takes (``text`` as the fallback, ``blocks`` for the
message), plus a ``graflow`` object with the request's fields for receivers that are not Slack. Slack
ignores keys it does not know, so one payload serves both.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

from graflow_api.v1 import feedback_pb2
from graflow_runtime.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

# Slack refuses a section text over 3,000 characters: a prompt is cut at 2,000 characters once
# escaped, the options at 500 (escaping grows the text up to 5 times, so the cut is on the result).
PROMPT_MAX = 2000
OPTIONS_MAX = 500
LINK_TEXT = "Answer in the console"


def feedback_url(console_url: str, run_id: str, request_id: str) -> str:
    """The console's page of the request (each path segment quoted)."""
    return (
        f"{console_url.rstrip('/')}/runs/{quote(run_id, safe='')}/feedback/{quote(request_id, safe='')}"
    )


def kind_name(kind: int) -> str:
    """``approval``, ``text``, ``selection``, ``multi_selection``, ``custom`` (``unspecified``)."""
    return feedback_pb2.FeedbackKind.Name(kind).removeprefix("FEEDBACK_KIND_").lower()


# Slack's mrkdwn control characters: ``<...>`` would be a link or a mention.
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _mrkdwn(text: str, limit: int | None = None) -> str:
    """User text made inert in Slack's mrkdwn, at most ``limit`` characters once escaped (then it
    ends with "…"). The cut is on the escaped text, never in an entity: cutting first and escaping
    after could grow a 2,000-character prompt of ``<`` past Slack's 3,000 (an HTTP 400, refused and
    lost)."""
    escaped = [_ESCAPES.get(char, char) for char in text]
    if limit is None or sum(map(len, escaped)) <= limit:
        return "".join(escaped)
    kept, length = [], 0
    for piece in escaped:
        if length + len(piece) > limit - 1:
            break
        kept.append(piece)
        length += len(piece)
    return "".join(kept) + "…"


def build_payload(request: feedback_pb2.FeedbackRequest, console_url: str) -> dict[str, Any]:
    """The JSON object POSTed for ``request``."""
    url = feedback_url(console_url, request.run_id, request.request_id)
    kind = kind_name(request.kind)
    prompt = _mrkdwn(request.prompt, PROMPT_MAX)
    context = f"run `{request.run_id}` · node `{_mrkdwn(request.node_id)}` · {kind}"
    if request.options:
        context += " · options: " + _mrkdwn(", ".join(request.options), OPTIONS_MAX)
    if request.deadline_ms:
        seconds = request.deadline_ms // 1000
        context += f" · answer by <!date^{seconds}^{{date_short_pretty}} {{time}}|deadline>"
    return {
        "text": f"Feedback requested by run {request.run_id} (node {_mrkdwn(request.node_id)}): {prompt} "
        f"<{url}|{LINK_TEXT}>",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Feedback requested*\n{prompt}"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": LINK_TEXT},
                        "url": url,
                        "style": "primary",
                    }
                ],
            },
        ],
        "graflow": {
            "run_id": request.run_id,
            "request_id": request.request_id,
            "node_id": request.node_id,
            "kind": kind,
            "prompt": request.prompt,
            "options": list(request.options),
            "created_at_ms": request.created_at_ms,
            "deadline_ms": request.deadline_ms,
            "url": url,
        },
    }


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def headers(body: bytes, secret: str, *, now: float | None = None) -> dict[str, str]:
    """Content type, timestamp and (with a secret) the signature of ``body``."""
    timestamp = int(time.time() if now is None else now)
    out = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(timestamp)}
    if secret:
        out[SIGNATURE_HEADER] = sign(secret, timestamp, body)
    return out
