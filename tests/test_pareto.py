import math

import pandas as pd
import pytest

from pibench.pareto import iso_accuracy_relu_reduction, iso_relu_accuracy_gain, pareto_front


def frame(points):
    return pd.DataFrame(points, columns=["relus", "accuracy"])


def test_front_drops_dominated_points():
    df = frame([(100, 0.80), (50, 0.70), (60, 0.65), (200, 0.80), (10, 0.50), (300, 0.90), (10, 0.40)])
    front = pareto_front(df)
    assert list(zip(front.relus, front.accuracy)) == [(10, 0.50), (50, 0.70), (100, 0.80), (300, 0.90)]


def test_front_ignores_missing_values_and_works_on_latency():
    df = pd.DataFrame({"latency": [1.0, 2.0, 0.5, 3.0], "accuracy": [0.7, 0.9, None, 0.8]})
    front = pareto_front(df, cost="latency")
    assert list(front.latency) == [1.0, 2.0]


def test_iso_accuracy_reduction_by_hand():
    a = frame([(10, 0.60), (20, 0.70), (40, 0.75)])
    b = frame([(30, 0.60), (80, 0.70), (90, 0.65)])
    out = iso_accuracy_relu_reduction(a, b, [0.6, 0.7, 0.75])
    assert list(out.relus_a) == [10, 20, 40]
    assert list(out.relus_b[:2]) == [30, 80] and math.isinf(out.relus_b[2])
    assert out.reduction[0] == pytest.approx(3.0)
    assert out.reduction[1] == pytest.approx(4.0)
    assert math.isnan(out.reduction[2])


def test_iso_relu_gain_by_hand():
    a = frame([(10, 0.60), (20, 0.70)])
    b = frame([(15, 0.55), (30, 0.72)])
    out = iso_relu_accuracy_gain(a, b, [12, 20, 30, 5])
    assert math.isnan(out.gain[0])  # b has nothing within 12
    assert out.gain[1] == pytest.approx(0.15)
    assert out.gain[2] == pytest.approx(-0.02)
    assert math.isnan(out.accuracy_a[3])
