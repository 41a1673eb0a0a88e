import pytest

from pibench.settings import parse_budget

TOTAL = 557_056


@pytest.mark.parametrize(
    "text, expected",
    [
        ("50000", 50_000),
        (50_000, 50_000),
        ("50k", 50_000),
        ("50K", 50_000),
        ("1.5k", 1_500),
        ("0.5M", 500_000),
        ("0.1", 55_705),  # 10% of 557,056, rounded down
        (0.1, 55_705),
        ("1.0", TOTAL),
        (" 12288 ", 12_288),
        ("1e4", 10_000),
        (str(TOTAL), TOTAL),
    ],
)
def test_parse_budget(text, expected):
    assert parse_budget(text, TOTAL) == expected


def test_fraction_never_exceeds_the_budget():
    for total in (101, 4608, 557_056):
        for f in (0.05, 0.2, 0.5, 0.33):
            assert parse_budget(str(f), total) <= f * total


def test_suffixed_budgets_above_total_fail():
    with pytest.raises(ValueError, match="above the model's 4,608 ReLUs"):
        parse_budget("1.5M", 4608)


@pytest.mark.parametrize("text", ["0", 0, "0.0", "0k", "0.0001"])
def test_zero_budget_fails(text):
    with pytest.raises(ValueError, match="at least one ReLU"):
        parse_budget(text, 4608)


@pytest.mark.parametrize("text", ["600000", "1M", 600_000])
def test_budget_above_total_fails(text):
    with pytest.raises(ValueError, match="above the model's 557,056 ReLUs"):
        parse_budget(text, TOTAL)


@pytest.mark.parametrize("text", ["abc", "", "-5", "5x", "1.5", "12.5k0", "1.2345k", True])
def test_unparsable_budget_fails(text):
    with pytest.raises(ValueError):
        parse_budget(text, TOTAL)
