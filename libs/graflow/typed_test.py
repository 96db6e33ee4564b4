"""Typed channel values (JSON only) and the Channel's list/number operations on a backend."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from graflow import payload
from graflow.context import Channel
from graflow.typed import from_json


@dataclass
class Point:
    x: int
    y: int = 0


@dataclass
class Shape:
    name: str
    points: list[Point] = field(default_factory=list)
    anchor: Point | None = None
    tags: dict[str, Point] = field(default_factory=dict)


class JsonBackend:
    """Stores JSON text like the result-store, and records the updates it was asked for."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.updates: list[tuple[str, str, Any]] = []

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        return {k: json.loads(self.data[k]) for k in keys if k in self.data}

    def set_many(self, values: dict[str, Any], ttl_s: float | None) -> None:
        self.data.update({k: payload.dumps(v) for k, v in values.items()})

    def delete(self, keys: list[str]) -> int:
        return sum(1 for k in keys if self.data.pop(k, None) is not None)

    def keys(self) -> list[str]:
        return sorted(self.data)

    def update(self, key: str, operation: str, value: Any, ttl_s: float | None) -> Any:
        self.updates.append((key, operation, value))
        return 7 if operation == "add" else None


def test_a_dataclass_set_on_the_channel_reads_back_typed_with_nested_values():
    channel = Channel(JsonBackend())
    shape = Shape("tri", [Point(1, 2), Point(3)], anchor=Point(0, 0), tags={"a": Point(5, 5)})
    channel.set("shape", shape)
    assert channel.get("shape")["points"][1] == {"x": 3, "y": 0}
    assert channel.get_typed("shape", Shape) == shape
    assert channel.get_typed("absent", Shape, default="none") == "none"


def test_unknown_fields_are_refused():
    with pytest.raises(TypeError, match="no field"):
        from_json(Point, {"x": 1, "z": 2})


def test_list_and_number_operations_go_to_the_backend_and_add_returns_the_new_value():
    backend = JsonBackend()
    channel = Channel(backend)
    channel.append("xs", Point(1, 1))
    channel.prepend("xs", "first")
    assert channel.add("n", 2) == 7
    assert backend.updates == [("xs", "append", Point(1, 1)), ("xs", "prepend", "first"), ("n", "add", 2)]
    with pytest.raises(TypeError):
        channel.add("n", "1")  # type: ignore[arg-type]
