"""Values as YAML or JSON give them, checked against the type hints they are declared with.

Settings and training arguments are checked when a config is loaded or a flag is parsed,
so `lr: fast` fails naming the key, not an hour later in training.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

from pibench.errors import UsageError


def type_problem(value: Any, hint: Any) -> str | None:
    """None when `value` (as YAML or JSON gives it) fits the type hint; else the type expected."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        return None if any(type_problem(value, a) is None for a in args) else " or ".join(_type_name(a) for a in args)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return _type_name(hint)
        return next((f"{_type_name(hint)} (item {i}: {p})" for i, v in enumerate(value)
                     if args and (p := type_problem(v, args[0])) is not None), None)
    if origin is dict or hint is dict:
        return None if isinstance(value, dict) else "a mapping"
    if hint is type(None):
        return None if value is None else "null"
    if hint is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "float"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "int"
    if hint is Path:
        return None if isinstance(value, (str, Path)) else "path"
    if isinstance(hint, type):
        return None if isinstance(value, hint) else hint.__name__
    return None


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    return str(hint) if typing.get_origin(hint) else getattr(hint, "__name__", str(hint))


def check_types(values: dict[str, Any], hints: dict[str, Any], what: str) -> None:
    """Raise UsageError naming the first key whose value does not fit its declared type."""
    for key, value in values.items():
        problem = type_problem(value, hints[key]) if key in hints else None
        if problem is not None:
            raise UsageError(f"{what} {key}: expected {problem}, got {value!r}")
