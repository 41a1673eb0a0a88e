import pytest
import torch

from pibench.modelfolder.folder import load_model
from pibench.cli import main
from pibench.linearize import METHODS, linearize, linearize_many, make_settings
from pibench.linearize.senet import MaskSearch, allocate, random_masks, relu_feeding_convs, topk_mask
from pibench.linearize.snl import AlphaSearch, Settings as SNLSettings, largest_alphas
from pibench.models import create_model
from pibench.relu import MaskedReLU, relu_counts
from pibench.train import train_baseline

from helpers import untrained_teacher

FAST = dict(batch_size=64, train_subset=128)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A trained teacher (seconds): for the `integration` tests that linearize it."""
    folder = tmp_path_factory.mktemp("teacher") / "resnet_digits"
    train_baseline("resnet_digits", "digits", folder, epochs=2, lr=0.05, batch_size=64, train_subset=256)
    return folder


# ---------------------------------------------------------------- allocation (SENet step 2)
def test_allocation_is_proportional_and_exact():
    assert allocate(100, [1000, 1000, 1000], [1, 1, 2]) == [25, 25, 50]
    counts = allocate(101, [1000] * 3, [1, 1, 1])
    assert sum(counts) == 101 and sorted(counts) == [33, 34, 34]


def test_allocation_clips_and_redistributes():
    # layer 2 would get 600 > 100: clipped to full, the other 500 split 1:3 over layers 0 and 1.
    assert allocate(600, [1000, 1000, 100], [1, 3, 6]) == [125, 375, 100]
    # clipping can cascade: once layer 2 is full, layer 1's new share also exceeds its size.
    assert allocate(900, [1000, 200, 100], [1, 2, 6]) == [600, 200, 100]


def test_allocation_totals_and_edge_cases():
    sizes = [1024, 1024, 512, 256, 17]
    for budget in (0, 1, 7, 999, 2000, 2832):
        counts = allocate(budget, sizes, [0.1, 0.6, 0.7, 0.9, 0.95])
        assert sum(counts) == budget and all(0 <= c <= s for c, s in zip(counts, sizes))
    assert allocate(5000, sizes, [1, 1, 1, 1, 1]) == sizes  # budget above the total: everything
    assert allocate(10, [10, 10], [0, 1]) == [0, 10]  # zero sensitivity gets nothing
    assert sum(allocate(10, [10, 10], [0, 0])) == 10  # all zero: shares follow sizes
    with pytest.raises(ValueError):
        allocate(10, [10], [1, 2])


# ---------------------------------------------------------------- mask scores (SENet step 3)
class _OneReLU(torch.nn.Module):
    """x -> MaskedReLU(x): its ReLU layer's input is the network input, so every activation is known."""

    def __init__(self, mask):
        super().__init__()
        self.relu = MaskedReLU()
        self.relu.set_mask(mask)

    def forward(self, x):
        return self.relu(x)


def test_mask_score_does_not_depend_on_the_positions_own_mask():
    """The score is |teacher's post-ReLU map - student's map if linear there| (senet.py, step 3): for a
    negative input x, |0 - x|, whether the position is kept or not. Scoring the student's masked output
    instead would give a kept position |0 - relu(x)| = 0, and the selection would flip every epoch."""
    x = torch.tensor([[[-4.0, -3.0, -2.0, -1.0, 1.0, 2.0]]]).unsqueeze(0)  # (1, C=1, H=1, W=6)
    teacher = _OneReLU(torch.ones(1, 1, 6, dtype=torch.bool))
    expected = (torch.relu(x) - x).abs().squeeze(0)  # 4, 3, 2, 1, 0, 0
    for kept in ([True, False, True, False, True, False], [False, True, False, True, False, True]):
        student = _OneReLU(torch.tensor(kept).view(1, 1, 6))
        search = MaskSearch(student, teacher, {"relu": 2})
        teacher(x)
        student(x)
        search.after_batch()
        assert torch.equal(search.scores["relu"], expected)
        search.select()
        assert student.relu.mask.flatten().tolist() == [True, True, False, False, False, False]
        search.close()


def test_mask_scores_add_up_over_every_batch():
    """The running score sums every batch of the pass: the first batch's scores are not lost when the last
    batch comes (a score from the last batch alone would keep positions the last few images favour)."""
    teacher = _OneReLU(torch.ones(1, 1, 4, dtype=torch.bool))
    student = _OneReLU(torch.zeros(1, 1, 4, dtype=torch.bool))
    batches = [torch.tensor([-8.0, -1.0, 0.0, 0.0]), torch.tensor([0.0, -2.0, -3.0, 5.0])]
    search = MaskSearch(student, teacher, {"relu": 2})
    search.score_pass(student, teacher, [(b.view(1, 1, 1, 4), None) for b in batches], "cpu")
    assert search.scores["relu"].flatten().tolist() == [8.0, 3.0, 3.0, 0.0]
    assert student.relu.mask.flatten().tolist() == [True, True, False, False]  # ties: the lower index
    search.close()


# ---------------------------------------------------------------- top-k masks
def test_topk_mask_keeps_exactly_the_largest():
    scores = torch.tensor([[[0.1, 0.9], [0.5, 0.3]], [[0.8, 0.0], [0.2, 0.7]]])
    mask = topk_mask(scores, 3)
    assert mask.dtype == torch.bool and mask.shape == scores.shape and int(mask.sum()) == 3
    assert mask[0, 0, 1] and mask[1, 0, 0] and mask[1, 1, 1] and not mask[0, 1, 0]
    assert int(topk_mask(scores, 0).sum()) == 0 and bool(topk_mask(scores, 8).all())
    assert int(topk_mask(torch.zeros(5), 2).sum()) == 2  # ties still give exactly k
    with pytest.raises(ValueError):
        topk_mask(scores, 9)


def test_random_masks_match_counts():
    masks = random_masks({"a": (2, 3, 3), "b": (4, 2, 2)}, {"a": 5, "b": 0}, seed=1)
    assert int(masks["a"].sum()) == 5 and int(masks["b"].sum()) == 0


def test_feeding_conv_of_post_add_relu_is_conv2_not_shortcut():
    feeding = relu_feeding_convs(create_model("resnet_digits"), (1, 8, 8))
    assert feeding["relu"] == "conv1"
    assert feeding["layers.1.0.relu1"] == "layers.1.0.conv1"
    assert feeding["layers.1.0.relu2"] == "layers.1.0.conv2"


def test_snl_fallback_keeps_the_largest_alphas_overall():
    alphas = {"a": torch.tensor([0.5, 0.005, 0.9]), "b": torch.tensor([0.02, 0.0])}
    masks = largest_alphas(alphas, 2)
    assert masks["a"].tolist() == [True, False, True] and masks["b"].tolist() == [False, False]
    assert [int(m.sum()) for m in largest_alphas(alphas, 4).values()] == [3, 1]


def test_snl_lambda_schedule_and_stopping_rule_on_scripted_counts():
    """The official rule: lambda x1.1 when the count is not below the lowest so far and epoch >= 5;
    a budget's snapshot is the first epoch at or under it; the search stops at the smallest budget."""
    search = AlphaSearch(create_model("cnn_digits"), [3000, 1000], SNLSettings(lam=1.0))
    assert search.schedule.lowest == 4096
    counts = [4096, 4000, 4100, 3900, 3950, 3950, 3800, 3800, 3900, 2900, 2950, 1500, 999]
    grew, stops = [], []
    for epoch, count in enumerate(counts):
        before = search.schedule.lam
        stops.append(search.record(epoch, count))
        grew.append(search.schedule.lam > before)
    # epochs 0-4 never grow (warm-up), even at 4100 >= lowest 4000; then: 3950 and 3950 not below 3900 (grow),
    # 3800 new lowest (no), 3800 not below (grow), 3900 (grow), 2900 (no), 2950 (grow), 1500 (no), 999 (no)
    assert grew == [False] * 5 + [True, False, True, True, False, True, False, False]
    assert search.schedule.lam == pytest.approx(1.1 ** 4)
    assert stops == [False] * 12 + [True]
    assert {b: s["epoch"] for b, s in search.snapshots.items()} == {3000: 10, 1000: 13}
    assert search.counts == counts and not search.pending
    search.close()


# ---------------------------------------------------------------- API and errors
def test_registry_and_settings_errors():
    assert METHODS.names() == ["deepreduce", "senet", "snl"]
    with pytest.raises(KeyError, match="Known: deepreduce, senet, snl"):
        make_settings("senett")
    with pytest.raises(ValueError, match="unknown senet settings \\['bogus'\\]"):
        make_settings("senet", bogus=1)
    assert make_settings("snl", epochs=3).epochs == 3


def test_budget_errors(tmp_path):
    teacher = untrained_teacher(tmp_path / "teacher")
    with pytest.raises(ValueError, match="above the model's 4,608 ReLUs"):
        linearize("senet", teacher, 5000, tmp_path / "x")
    with pytest.raises(ValueError, match="at least one ReLU"):
        linearize("snl", teacher, "0", tmp_path / "x")
    with pytest.raises(ValueError, match="2 budgets but 1 output"):
        linearize_many("snl", teacher, [1, 2], [tmp_path / "x"])


def _check(card, folder, budget, method):
    assert card.method == method and card.budget == budget and card.relus <= budget
    loaded_card, model = load_model(folder)
    assert sum(c.relus for c in relu_counts(model)) == card.relus == loaded_card.relus
    assert 0 <= card.accuracy <= 100


@pytest.mark.integration
def test_senet_end_to_end(teacher, tmp_path):
    budgets, outs = [2304, 230], [tmp_path / "s50", tmp_path / "s5"]
    cards = linearize_many("senet", teacher, budgets, outs, epochs=1, search_epochs=1, sensitivity_epochs=1, **FAST)
    for card, out, b in zip(cards, outs, budgets):
        _check(card, out, b, "senet")
        info = card.method_info
        assert set(info["sensitivity"]) == set(info["allocation"]) and sum(info["allocation"].values()) == b
        assert card.relus == b  # SENet spends the whole budget
        assert len(info["mask_overlaps"]) == 1 and card.budget_reached.startswith("allocation: budget split exactly")
    assert list((teacher / "cache").glob("senet-sensitivity-*.json"))


@pytest.mark.integration
def test_snl_end_to_end(teacher, tmp_path):
    budgets, outs = [921, 230], [tmp_path / "n20", tmp_path / "n5"]
    cards = linearize_many("snl", teacher, budgets, outs, epochs=1, search_epochs=2, lam=1e-2, **FAST)
    for card, out, b in zip(cards, outs, budgets):
        _check(card, out, b, "snl")
        assert len(card.method_info["search_counts"]) <= 2
    # two search epochs cannot reach 5% from 100%: the fallback says so on the card
    assert cards[1].budget_reached == "fallback: top-B alpha after 2 epochs"
    assert not (outs[1] / "checkpoints").exists()
    # A re-run after an interruption keeps the budgets already finished.
    finished = (outs[0] / "weights.safetensors").stat().st_mtime_ns
    again = linearize_many("snl", teacher, budgets, outs, epochs=1, search_epochs=2, lam=1e-2, **FAST)
    assert (outs[0] / "weights.safetensors").stat().st_mtime_ns == finished
    assert [c.relus for c in again] == [c.relus for c in cards]


@pytest.mark.integration
def test_cli_train_and_linearize(tmp_path, capsys):
    base = tmp_path / "base"
    assert main(["train", "--arch", "cnn_digits", "--dataset", "digits", "--epochs", "1", "--out", str(base)]) == 0
    out = tmp_path / "lin"
    args = ["linearize", "--method", "senet", "--teacher", str(base), "--budget", "0.1", "--out", str(out),
            "--epochs", "1", "--set", "search_epochs=0", "--set", "sensitivity_epochs=1"]
    assert main(args) == 0
    assert "409 ReLUs (budget 409)" in capsys.readouterr().out
    assert main(args[:6] + ["5000"] + args[7:]) == 2
    assert "above the model's 4,096 ReLUs" in capsys.readouterr().err
    assert main(["linearize", "--method", "deepreduce", "--teacher", str(base), "--budget", "100", "--out", str(out)]) == 2
    assert "ResNet-family" in capsys.readouterr().err


SWEEP_CONFIGS = ["demo", "resnet18_cifar100", "resnet18_tinyimagenet", "wrn22_8_cifar100", "cost_paper"]


@pytest.mark.parametrize("name", SWEEP_CONFIGS)
def test_configs_are_valid(name):
    from pathlib import Path

    from pibench.sweep.config import load_config

    cfg = load_config(Path(__file__).parents[1] / "configs" / f"{name}.yaml")  # validates every key and budget
    assert cfg.run == name


def test_report_lists_how_each_budget_was_reached(tmp_path):
    from pibench.modelfolder.folder import save_model
    from pibench.report.report import budget_lines

    run, models = tmp_path / "results" / "r", tmp_path / "models"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"run: r\nmodels_dir: {models}\n")
    save_model(create_model("cnn_digits"), models / "snl_5", dataset="digits", method="snl", budget=204,
               budget_reached="fallback: top-B alpha after 7 epochs")
    save_model(create_model("cnn_digits"), models / "base", dataset="digits")
    lines = budget_lines(run, ["base", "snl_5", "gone"])
    assert lines == ["- snl_5 (snl, budget 204): fallback: top-B alpha after 7 epochs"]
