"""The digits pipeline of configs/demo.yaml end to end, without MPC (slow: a minute or two on 2 cores)."""

from pathlib import Path

import pytest
import yaml

from pibench.linearize import linearize_many
from pibench.train import train_baseline

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
ONE_TEST_SAMPLE = 100 / 360  # digits has 360 test images


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = yaml.safe_load(CONFIG.read_text())["experiments"][0]
    root = tmp_path_factory.mktemp("digits")
    base = train_baseline(cfg["arch"], cfg["dataset"], root / "base", **cfg["teacher"])
    return cfg, root, base


@pytest.mark.slow
def test_baseline_reaches_95(setup):
    _, _, base = setup
    assert base.relus == 4608 and base.accuracy >= 95.0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["deepreduce", "senet", "snl"])
def test_method_budgets_and_monotone_accuracy(setup, method):
    cfg, root, base = setup
    outs = [root / f"{method}_{b}" for b in cfg["budgets"]]
    cards = linearize_many(method, root / "base", cfg["budgets"], outs, **cfg["methods"][method])
    budgets = [int(float(b) * base.relus) for b in cfg["budgets"]]
    for card, budget in zip(cards, budgets):
        print(f"{method} budget {budget}: {card.relus} ReLUs, {card.accuracy:.2f}%")
        assert card.budget == budget and card.relus <= budget
    if method == "snl":  # the search itself reaches every budget, down to 5%: no top-B fallback
        assert all(c.budget_reached.startswith("search reached budget at epoch") for c in cards)
    accs = [c.accuracy for c in cards]
    # Falls or stays flat as the budget shrinks, up to one test image of noise.
    assert all(a + ONE_TEST_SAMPLE >= b - 1e-9 for a, b in zip(accs, accs[1:])), accs


@pytest.mark.slow
@pytest.mark.parametrize("budget", ["0.2", "0.05"])
def test_senet_mask_search_converges(setup, budget):
    """Re-selected masks settle: the last re-selection keeps >= 90% (Jaccard) of the masks it replaces."""
    cfg, root, _ = setup
    settings = {**cfg["methods"]["senet"], "epochs": 1}
    card = linearize_many("senet", root / "base", [budget], [root / f"senet_converge_{budget}"], **settings)[0]
    overlaps = card.method_info["mask_overlaps"]
    print(f"SENet mask overlaps at {budget}:", overlaps)
    assert len(overlaps) == settings["search_epochs"] >= 2 and overlaps[-1] >= 0.9


@pytest.mark.slow
def test_senet_masks_beat_random_masks_at_5_percent(setup):
    """Same per-layer counts, same seeds, same short fine-tuning: only the positions differ."""
    cfg, root, _ = setup
    settings = {**cfg["methods"]["senet"], "epochs": 1}  # random masks train through the search epochs too
    gains = []
    for seed in (0, 1, 2):
        acc = {}
        for masks in ("search", "random"):
            card = linearize_many("senet", root / "base", ["0.05"], [root / f"senet_{masks}_{seed}"], seed=seed,
                                  **{**settings, "masks": masks})[0]
            acc[masks] = card.accuracy
        assert card.method_info["allocation"] == linearize_masks_allocation(root / f"senet_search_{seed}")
        gains.append(acc["search"] - acc["random"])
    print("SENet search - random accuracy at 5%, seeds 0-2:", gains)
    assert sum(gains) / len(gains) > 0 and sum(g > 0 for g in gains) >= 2


def linearize_masks_allocation(folder):
    from pibench.checkpoint import load_card

    return load_card(folder).method_info["allocation"]
