import math
import re

import pytest

from pibench.modelfolder.folder import load_model, save_model
from pibench.linearize import linearize, linearize_many, load_teacher
from pibench.linearize.deepreduce import (Settings, criticality, criticality_scores, enumerate_candidates, select_for_training)
from pibench.models import create_model, model_defaults
from pibench.models.resnet import DRD_CONFIGS
from pibench.relu import count_relus
from pibench.train import train_baseline

from helpers import untrained_teacher


def _normalized(config):
    """A DRD_CONFIGS entry written as a candidate's kwargs."""
    out = dict(culled=sorted(config.get("culled", ())), thinned=bool(config.get("thinned", False)),
               alpha=float(config.get("alpha", 1.0)), stem_stride=int(config.get("stem_stride", 1)), stem_relu=False)
    if "blocks" in config:
        out["blocks"] = list(config["blocks"])
    return out


@pytest.mark.parametrize(
    "prefix, defaults, order",
    [
        # The paper's criticality orders: CIFAR-100 culls stage 1 then 4; TinyImageNet stage 1 then 2.
        ("drd_c100_", "drd_c100_230k", [1, 4, 2, 3]),
        ("drd_tiny_", "drd_tiny_918k", [1, 2, 3, 4]),
    ],
)
@pytest.mark.integration  # builds every DeepReDuce candidate of ResNet18, hundreds of full-size models
def test_candidates_reproduce_every_released_drd_model(prefix, defaults, order):
    data = {k: v for k, v in model_defaults(defaults).items() if k in ("in_chans", "input_size", "num_classes")}
    teacher_args = create_model("resnet18", **data).pibench_args
    candidates = enumerate_candidates("resnet18", teacher_args, order, blocks=[None, (2, 1, 1, 1)])
    names = [n for n in DRD_CONFIGS if n.startswith(prefix)]
    assert len(names) >= 8
    for name in names:
        wanted = _normalized(DRD_CONFIGS[name])
        match = [c for c in candidates if c.kwargs == wanted]
        assert len(match) == 1, name
        assert match[0].relus == count_relus(create_model(name)), name


def test_criticality_is_the_papers_metric_not_accuracy_per_relu():
    """Hand-made keep-only-stage-k accuracies on ResNet18's stage sizes, all-linear at 20%: stage 4 adds
    least over the linear network per log-ReLU after stage 1, so the paper's metric culls 1, then 4;
    accuracy per ReLU would rank by ReLU count (1, 2, 3, 4) whatever the accuracies."""
    stages = {1: (262144, 60.0), 2: (131072, 68.0), 3: (65536, 70.0), 4: (32768, 58.0)}
    scores = criticality_scores(stages, linear_accuracy=20.0)
    assert sorted(stages, key=scores.get) == [1, 4, 2, 3]
    assert sorted(stages, key=lambda k: stages[k][1] / stages[k][0]) == [1, 2, 3, 4]
    raw = {k: (acc - 20.0) / math.log(relus) for k, (relus, acc) in stages.items()}
    assert scores == pytest.approx({k: v / raw[3] for k, v in raw.items()})  # kappa: most critical = 1
    with pytest.raises(ValueError):
        criticality_scores({1: (1, 50.0)}, 10.0)


def test_stages_are_culled_least_critical_first(tmp_path):
    """Fixed keep-only-stage-k accuracies (a stub trainer): resnet_digits' stages keep 2,048 / 1,024 / 512
    ReLUs; over the all-linear 20 %, stage 3 adds least per log-ReLU, then stage 1, so the cull order is
    3, 1, 2 (neither stage order, ReLU order nor their reverse), and candidates cull 3, then 1 and 3."""
    teacher = load_teacher(untrained_teacher(tmp_path / "teacher"), train_subset=64)
    accuracy = {(1, 2, 3): 20.0, (2, 3): 50.0, (1, 3): 80.0, (1, 2): 40.0}  # by culled stages

    def stub(model, desc):
        return accuracy[tuple(model.pibench_args["culled"])]

    result = criticality(teacher, Settings(), 3, train=stub)
    assert result["order"] == [3, 1, 2]
    assert result["linear_accuracy"] == 20.0 and result["stages"]["2"]["criticality"] == 1.0
    culled = {tuple(c.kwargs["culled"]) for c in enumerate_candidates("resnet_digits", teacher.card.arch_args,
                                                                      result["order"])}
    assert culled == {(), (3,), (1, 3)}
    # at 1,536 ReLUs cull3_thin ties with cull3_a0.5: thinning comes first, as in the paper
    chosen = select_for_training(enumerate_candidates("resnet_digits", teacher.card.arch_args, result["order"]),
                                 [1536, 1024], per_budget=1)
    assert [c.name for c in chosen] == ["cull3_thin", "cull13"]


def test_select_for_training_takes_the_largest_under_each_budget():
    cands = enumerate_candidates("resnet_digits", create_model("resnet_digits").pibench_args, [1, 2, 3])
    chosen = select_for_training(cands, [2304, 230], per_budget=2)
    assert len(chosen) == 4
    under = sorted((c.relus for c in cands if c.relus <= 230), reverse=True)[:2]
    assert sorted(c.relus for c in chosen if c.relus <= 230) == sorted(under)
    assert len(select_for_training(cands, [2304], None)) == sum(c.relus <= 2304 for c in cands)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A trained teacher (seconds): for the `integration` tests that train candidates."""
    folder = tmp_path_factory.mktemp("drd") / "resnet_digits"
    train_baseline("resnet_digits", "digits", folder, epochs=1, lr=0.05, batch_size=64, train_subset=128)
    return folder


@pytest.mark.integration
def test_deepreduce_end_to_end(teacher, tmp_path):
    budgets, outs = [2304, 230], [tmp_path / "d50", tmp_path / "d5"]
    cards = linearize_many("deepreduce", teacher, budgets, outs, epochs=1, criticality_epochs=1, per_budget=1,
                           batch_size=64, train_subset=128)
    for card, out, budget in zip(cards, outs, budgets):
        assert card.method == "deepreduce" and card.relus <= budget
        _, model = load_model(out)
        assert count_relus(model) == card.relus
        assert (out / "frontier.csv").is_file() and (out / "candidates.csv").is_file()
        assert card.arch_args["stem_relu"] is False
    info = cards[0].method_info
    assert sorted(info["stage_order"]) == [1, 2, 3] and set(info["criticality"]) == {"1", "2", "3"}
    assert 0 <= info["linear_accuracy"] <= 100
    assert cards[1].budget_reached.startswith(f"candidate {cards[1].method_info['chosen']} (")
    # chosen on the held-out part of the training set: the smaller budget chooses among a subset
    held = {c["candidate"]: c["holdout_accuracy"] for c in info["candidates"]}
    assert held[cards[1].method_info["chosen"]] <= held[cards[0].method_info["chosen"]]
    assert "held-out" in cards[0].provenance["accuracy_rule"]
    # a second call reuses the cached criticality and candidates
    again = linearize("deepreduce", teacher, 230, tmp_path / "again", epochs=1, criticality_epochs=1, per_budget=1,
                      batch_size=64, train_subset=128)
    assert again.method_info["chosen"] == cards[1].method_info["chosen"] and again.accuracy == cards[1].accuracy


def test_deepreduce_budget_below_smallest_candidate(tmp_path):
    with pytest.raises(ValueError, match="below DeepReDuce's smallest candidate \\(32 ReLUs\\)"):
        linearize("deepreduce", untrained_teacher(tmp_path / "teacher"), 10, tmp_path / "x", stage_order=[1, 2, 3])


@pytest.mark.integration  # enumerates ResNet18's candidates
def test_paper_config_trains_the_papers_configurations():
    """configs/resnet18_cifar100.yaml pins the paper's C100 stage order, so a dry run lists what DeepReDuce
    trains: the released C100 models' configurations among them (README: paper configs)."""
    from pathlib import Path

    from pibench.sweep.run import describe

    config = Path(__file__).resolve().parents[1] / "configs" / "resnet18_cifar100.yaml"
    (line,) = [line for line in describe(config, "local").splitlines() if "trains " in line]
    trained = set(re.findall(r"(cull[\w.]+) \(", line))
    paper = {"cull1", "cull1_thin", "cull1_thin_a0.5", "cull14_thin_a0.5", "cull1_thin_s2", "cull1_thin_a0.5_s2",
             "cull14_thin_a0.5_s2"}
    assert paper <= trained


def test_equal_relus_rank_cull_then_thin_then_alpha_then_stem_stride_then_blocks():
    """The paper's order of steps among reshapings: alpha before rho (stem stride) before blocks, for one
    reshaping and for two; thinning before any reshaping."""
    from pibench.linearize.deepreduce import Candidate, paper_step_rank

    def cand(name, thinned=False, alpha=1.0, stride=1, blocks=None):
        kwargs = dict(culled=[1], thinned=thinned, alpha=alpha, stem_stride=stride, stem_relu=False)
        if blocks:
            kwargs["blocks"] = blocks
        return Candidate(name, kwargs, relus=1000)

    pool = [cand("blocks", blocks=[2, 1, 1]), cand("stride", stride=2), cand("alpha", alpha=0.5),
            cand("stride+blocks", stride=2, blocks=[2, 1, 1]), cand("alpha+blocks", alpha=0.5, blocks=[2, 1, 1]),
            cand("alpha+stride", alpha=0.5, stride=2), cand("thin", thinned=True), cand("thin+alpha", True, 0.5)]
    assert [c.name for c in sorted(pool, key=paper_step_rank)] == [
        "thin", "thin+alpha", "alpha", "stride", "blocks", "alpha+stride", "alpha+blocks", "stride+blocks"]


@pytest.mark.integration
def test_candidate_is_chosen_on_the_held_out_part_where_the_test_set_disagrees(teacher, tmp_path, monkeypatch):
    """Trained candidates whose held-out and test accuracies rank them in opposite orders (a stand-in trainer
    saves each untrained candidate with those accuracies): the budget's model is the held-out winner, and its
    reported accuracy is that model's test accuracy."""
    from pibench.modelfolder.folder import is_model_folder
    from pibench.linearize import deepreduce

    accuracies = {}  # candidate -> (test, held-out), opposite rankings

    def trained(teacher_, cand, cfg, folder, loaders):
        if cand.name not in accuracies:
            accuracies[cand.name] = (50.0 + len(accuracies), 90.0 - len(accuracies))
        test, held = accuracies[cand.name]
        if not is_model_folder(folder):
            save_model(deepreduce._build(teacher_, cand.kwargs), folder, dataset="digits", method="deepreduce",
                       accuracy=test, method_info={"candidate": cand.name, "holdout_accuracy": held})
        return test, held

    monkeypatch.setattr(deepreduce, "train_candidate", trained)
    card = linearize("deepreduce", teacher, 2304, tmp_path / "d", stage_order=[1, 2, 3], per_budget=3, epochs=1,
                     batch_size=64, train_subset=128)
    assert len(accuracies) == 3
    held_winner = max(accuracies, key=lambda name: accuracies[name][1])
    test_winner = max(accuracies, key=lambda name: accuracies[name][0])
    assert held_winner != test_winner
    assert card.method_info["chosen"] == held_winner and card.accuracy == accuracies[held_winner][0]


@pytest.mark.integration
def test_a_candidates_held_out_accuracy_is_measured_on_the_held_out_loader(teacher, tmp_path):
    """`train_candidate` reports the test accuracy and chooses by the held-out one: with held-out labels
    shifted by one class the two differ, and the held-out number is the model's accuracy on that loader."""
    from torch.utils.data import DataLoader, TensorDataset

    from pibench.linearize import deepreduce
    from pibench.train import evaluate

    t = load_teacher(teacher, train_subset=128, batch_size=64)
    images, labels = next(iter(DataLoader(t.test_loader.dataset, batch_size=64)))
    shifted = DataLoader(TensorDataset(images, (labels + 1) % 10), batch_size=64)
    cand = enumerate_candidates("resnet_digits", t.card.arch_args, [1, 2, 3])[0]
    cfg = deepreduce._kd_config(t, Settings(), 1)
    test, held = deepreduce.train_candidate(t, cand, cfg, tmp_path / cand.name, (t.train_loader, shifted))
    _, model = load_model(tmp_path / cand.name)
    assert held == pytest.approx(evaluate(model, shifted)) and test == pytest.approx(evaluate(model, t.test_loader))
    assert held != test
