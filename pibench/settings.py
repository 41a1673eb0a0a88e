"""Values as users write them, checked before any work: ReLU budgets and typed settings.

A budget is "50000", "50k", "1.5M", or a fraction "0.1" of the model. Settings and
training arguments (YAML, JSON, `--set KEY=VALUE`) are checked against the type hints
they are declared with, so `lr: fast` fails naming the key, not an hour later in training.
"""

from __future__ import annotations

import math
import re
import types
import typing
from pathlib import Path
from typing import Any

from pibench.errors import UsageError

_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?\s*([kKmM]?)\s*$")


def parse_budget(text: str | int | float, total: int) -> int:
    """The number of ReLUs a budget allows, for a model with `total` ReLUs.

    An integer ("50000", 50000) or a suffixed number ("50k", "1.5M") is a count; a bare
    number with a decimal point in (0, 1] ("0.1", 0.1) is a fraction of `total`,
    rounded down so the budget is never exceeded. Raises ValueError for anything that
    does not parse, a budget <= 0, or one above `total`.
    """
    if isinstance(text, bool):
        raise UsageError(f"budget must be a number, got {text!r}")
    if isinstance(text, int):
        count = text
    elif isinstance(text, float):
        count = _fraction_or_count(text, str(text), total)
    else:
        match = _PATTERN.match(str(text))
        if not match:
            raise UsageError(
                f"cannot parse budget {text!r}: use a ReLU count (50000, 50k, 1.5M) or a fraction of the model (0.1)"
            )
        number, exponent, suffix = match.groups()
        value = float(number) * (10 ** int(exponent) if exponent else 1)
        if suffix:
            count = value * _SUFFIX[suffix.lower()]
            if count != int(count):
                raise UsageError(f"budget {text!r} is not a whole number of ReLUs")
            count = int(count)
        elif "." in number or exponent:
            count = _fraction_or_count(value, text, total)
        else:
            count = int(number)
    if count <= 0:
        raise UsageError(f"budget {text!r} is {count} ReLUs; a budget must keep at least one ReLU")
    if count > total:
        raise UsageError(f"budget {text!r} ({count:,} ReLUs) is above the model's {total:,} ReLUs")
    return count


def _fraction_or_count(value: float, text: str, total: int) -> int:
    if 0 < value <= 1:
        return math.floor(value * total)
    if value == int(value):
        return int(value)
    raise UsageError(f"budget {text!r}: a fraction must lie in (0, 1]; a count must be a whole number")


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
