"""Pareto frontiers and the two comparisons PI papers state between methods.

*Iso-accuracy ReLU reduction*: how many times fewer ReLUs method A needs than method B
to reach the same accuracy. *Iso-ReLU accuracy gain*: how many points more accurate A
is than B at the same ReLU budget. Both are read off each method's Pareto frontier as
a step function (a method at budget r is as good as its best model with ≤ r ReLUs), so
no value is invented between measured points.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import pandas as pd


def pareto_front(df: pd.DataFrame, cost: str = "relus", value: str = "accuracy") -> pd.DataFrame:
    """Rows not dominated by another row with lower-or-equal cost and higher-or-equal value.

    Lower `cost` and higher `value` are better; rows missing either are ignored. The
    result is sorted by cost (ascending), so its value column rises strictly.
    """
    data = df.dropna(subset=[cost, value]).sort_values([cost, value], ascending=[True, False])
    keep = []
    best = -math.inf
    for idx, v in zip(data.index, data[value]):
        if v > best:
            keep.append(idx)
            best = v
    return data.loc[keep]


def cost_to_reach(front: pd.DataFrame, target: float, cost: str = "relus", value: str = "accuracy") -> float:
    """Least cost at which the frontier reaches `target` value (inf if it never does)."""
    reached = front[front[value] >= target]
    return float(reached[cost].min()) if len(reached) else math.inf


def value_at(front: pd.DataFrame, budget: float, cost: str = "relus", value: str = "accuracy") -> float:
    """Best value the frontier reaches within `budget` cost (nan if none fits)."""
    fits = front[front[cost] <= budget]
    return float(fits[value].max()) if len(fits) else math.nan


def _compare(
    a: pd.DataFrame, b: pd.DataFrame, points: Sequence[float], read: Callable[..., float], cost: str, value: str
) -> list[tuple[float, float, float]]:
    """(point, A's reading, B's reading) off both frontiers at each point."""
    fa, fb = pareto_front(a, cost, value), pareto_front(b, cost, value)
    return [(p, read(fa, p, cost, value), read(fb, p, cost, value)) for p in points]


def iso_accuracy_relu_reduction(
    a: pd.DataFrame, b: pd.DataFrame, targets: Sequence[float], cost: str = "relus", value: str = "accuracy"
) -> pd.DataFrame:
    """For each target accuracy: ReLUs each method needs, and B's count ÷ A's count."""
    rows = []
    for t, ca, cb in _compare(a, b, targets, cost_to_reach, cost, value):
        ratio = cb / ca if math.isfinite(ca) and math.isfinite(cb) and ca > 0 else math.nan
        rows.append({"target": t, f"{cost}_a": ca, f"{cost}_b": cb, "reduction": ratio})
    return pd.DataFrame(rows)


def iso_relu_accuracy_gain(
    a: pd.DataFrame, b: pd.DataFrame, budgets: Sequence[float], cost: str = "relus", value: str = "accuracy"
) -> pd.DataFrame:
    """For each ReLU budget: the best accuracy of each method within it, and A − B."""
    rows = [
        {"budget": r, f"{value}_a": va, f"{value}_b": vb, "gain": va - vb}
        for r, va, vb in _compare(a, b, budgets, value_at, cost, value)
    ]
    return pd.DataFrame(rows)
