"""Typed reads of JSON values: dataclasses (nested, in lists and dicts), and classes with a
pydantic-style ``model_validate``. JSON only: nothing is ever unpickled or evaluated."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def from_json(cls: type[T], value: Any) -> T:
    """``value`` (decoded JSON) as an instance of ``cls``. Dataclass fields are converted by their
    annotations; keys the dataclass does not have are refused (TypeError), like the constructor."""
    return _convert(cls, value)  # type: ignore[no-any-return]


def _convert(tp: Any, value: Any) -> Any:
    if value is None or tp is Any:
        return value
    validate = getattr(tp, "model_validate", None)
    if callable(validate):
        return validate(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TypeError(f"{tp.__name__} needs a JSON object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        fields = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = sorted(set(value) - fields)
        if unknown:
            raise TypeError(f"{tp.__name__} has no field(s) {', '.join(map(repr, unknown))}")
        return tp(**{name: _convert(hints.get(name, Any), item) for name, item in value.items()})
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (list, set, frozenset, tuple) and isinstance(value, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return tuple(_convert(a, v) for a, v in zip(args, value, strict=False))
        item_type = args[0] if args else Any
        return origin(_convert(item_type, v) for v in value)
    if origin is dict and isinstance(value, dict):
        value_type = args[1] if len(args) == 2 else Any
        return {k: _convert(value_type, v) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for option in args:
            if option is type(None):
                continue
            try:
                return _convert(option, value)
            except (TypeError, ValueError):
                continue
    return value
