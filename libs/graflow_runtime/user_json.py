"""Parsing JSON that users send: standard JSON only, finite numbers, bounded nesting.

``json.loads`` accepts ``NaN`` and ``Infinity``, turns ``1e400`` into ``inf`` (which
``json.dumps(..., allow_nan=False)`` then refuses) and raises ``RecursionError`` on deeply nested
input: each service that parses user JSON calls :func:`loads` instead, which raises
:class:`UserJsonError` (a ``ValueError``) with what is wrong in every one of these cases.
"""

from __future__ import annotations

import json
import math

from graflow_runtime.limits import MAX_JSON_DEPTH


class UserJsonError(ValueError):
    """The text is not JSON this system accepts; the message says why."""


def _reject_constant(value: str) -> object:
    raise UserJsonError(f"{value} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UserJsonError(f"{text[:40]} is not a finite number")
    return value


def depth(value: object) -> int:
    """How deep lists and objects nest in ``value`` (0 for a scalar), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def loads(raw: str | bytes) -> object:
    """``raw`` parsed, or :class:`UserJsonError` when it is not valid JSON, holds a number that is
    not finite or nests lists and objects deeper than :data:`MAX_JSON_DEPTH`."""
    too_deep = f"nested deeper than {MAX_JSON_DEPTH} levels (the limit of JSON depth)"
    try:
        value = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise UserJsonError(too_deep) from None
    except UserJsonError:
        raise
    except ValueError as exc:
        raise UserJsonError(f"not valid JSON: {exc}") from None
    if depth(value) > MAX_JSON_DEPTH:
        raise UserJsonError(too_deep)
    return value
