"""ReLU budgets as users write them: "50000", "50k", "1.5M", or a fraction "0.1" of the model."""

from __future__ import annotations

import math
import re

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
