from __future__ import annotations

import pytest

from graflow_runtime import user_json
from graflow_runtime.limits import MAX_JSON_DEPTH


@pytest.mark.parametrize(("raw", "problem"), [
    (b"1e400", "1e400 is not a finite number"),
    (b"[-1e999]", "-1e999 is not a finite number"),
    (b"NaN", "NaN is not valid JSON"),
    (b'{"a": Infinity}', "Infinity is not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, f"nested deeper than {MAX_JSON_DEPTH} levels"),
    (b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1), "nested deeper than"),
    (b"{nope", "not valid JSON"),
    (b"\xff", "not valid JSON"),
])
def test_refused(raw, problem):
    with pytest.raises(user_json.UserJsonError, match=problem):
        user_json.loads(raw)


def test_accepted_up_to_the_depth_limit():
    deepest = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert user_json.depth(user_json.loads(deepest)) == MAX_JSON_DEPTH
    assert user_json.loads(b'{"a": [1.5, {"b": null}], "c": 1e308}') == {"a": [1.5, {"b": None}], "c": 1e308}
    assert user_json.depth(7) == 0
