"""Dataclasses from JSON: the inverse of :func:`normlab.lab.cells.to_jsonable`.

Summaries and configs are written to results.json and config.json as plain JSON (tuples
as lists, dataclasses as objects). :func:`from_jsonable` rebuilds them from their type
hints: a dataclass from an object, ``tuple[...]`` and ``list[...]`` from a list,
``dict[str, T]`` from an object, ``X | None`` from null or an X; numbers, strings and
booleans stay as they are (an int where a float is declared becomes a float).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any

from normlab.errors import UsageError

__all__ = ["from_jsonable"]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_jsonable(tp: Any, value: Any) -> Any:
    """``value`` (parsed JSON) as an instance of the type ``tp``.

    Raises:
        UsageError: an object has keys the dataclass does not declare, or lacks one
            it requires.
    """
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass(tp, value)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        return from_jsonable(rest[0], value) if len(rest) == 1 else value
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_jsonable(args[0], v) for v in value)
        return tuple(from_jsonable(a, v) for a, v in zip(args, value, strict=True))
    if origin is list:
        return [from_jsonable(args[0], v) for v in value] if args else list(value)
    if origin in (dict, Mapping):
        item = args[1] if args else Any
        return {k: from_jsonable(item, v) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _dataclass(cls: type, values: Mapping[str, Any]) -> Any:
    if not isinstance(values, Mapping):
        raise UsageError(f"expected an object for {cls.__name__}, got {type(values).__name__}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UsageError(f"unknown {cls.__name__} key(s): {', '.join(unknown)}")
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise UsageError(f"{cls.__name__} lacks key(s): {', '.join(missing)}")
    kwargs = {name: from_jsonable(hints[name], values[name]) for name in fields if name in values}
    return cls(**kwargs)
