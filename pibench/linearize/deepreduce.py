"""DeepReDuce (Jha et al., "DeepReDuce: ReLU Reduction for Fast Private Inference",
ICML 2021): structural ReLU removal on ResNets, trained with KD, Pareto frontier.

1. Criticality (the paper's section 3). For each stage k, a variant that keeps only
   stage k's ReLUs (every other stage culled, stem ReLU removed) is trained with KD
   from the teacher for `criticality_epochs`, and so is the all-linear variant (every
   stage culled); accuracies are measured on the held-out part of the training set (see 4).
   Stage k's criticality is C_k = (Acc_k - Acc_lin) / (kappa * ln #ReLUs_k): the
   accuracy the stage's ReLUs add over the linear network, per order of magnitude of
   their count, so a stage with few ReLUs that add little is not ranked critical merely
   for being small (accuracy per ReLU would order stages by ReLU count). kappa
   scales the most critical stage to 1 and the base of the logarithm is immaterial:
   neither changes the order. Stages are culled least critical first; the ranking is
   cached per teacher.
2. Candidates. For c = 0 .. stages-1 least critical stages culled, every combination
   of thinning (drop each block's post-add ReLU), width alpha (`alphas`), stem stride
   (`stem_strides`, 2 <=> rho = 0.5) and blocks per stage (`blocks`, None = the
   teacher's). The stem ReLU is removed in all of them, as in the released models.
3. Candidates are trained with Hinton KD (T=4,
   (1-kd)*CE + kd*KD) from the all-ReLU teacher for `epochs`. A candidate each of whose
   tensors the teacher has with the same shape (culled, thinned, stem stride 2, and
   fewer blocks, whose blocks are a subset of the teacher's) starts from the teacher's
   weights (a choice made for speed; the paper trains from scratch); a narrower one
   (alpha < 1) from a seeded initialization. Trained candidates are cached
   as model folders under the teacher's cache. To bound the cost, only the
   `per_budget` candidates with the most ReLUs at or under each budget are trained
   (the closest to a budget are the likeliest to win it), ties broken in the paper's
   order of steps: cull, then thin, then reshape (alpha, then rho, then blocks), so
   the paper's configurations (cull1_thin, cull1_thin_a0.5, ...) come first;
   `per_budget=None` trains every candidate within the largest budget.
4. The Pareto frontier of (ReLUs, test accuracy) over trained candidates is saved in
   method_info and as frontier.csv (all trained candidates as candidates.csv) in each
   output folder. For a budget, the output is the candidate at or under it with the best
   accuracy on a held-out part of the training set (`holdout`, 10 %; candidates and the
   criticality runs train on the rest), so the test set never chooses: the card reports
   the chosen candidate's test accuracy after its last epoch, as for every method.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from pibench.data import get_dataset, holdout_loaders
from pibench.errors import UsageError
from pibench.linearize import Teacher, save_linearized, settings_key, train_config
from pibench.modelfolder.folder import is_model_folder, load_card, load_model, save_model
from pibench.models import create_model
from pibench.models.resnet import ResNet
from pibench.pareto import pareto_front
from pibench.relu import count_relus
from pibench.train import TrainConfig, evaluate, fit, seed_everything

log = logging.getLogger(__name__)

# Build arguments a candidate sets; the rest of the teacher's arch_args carry over.
CANDIDATE_KEYS = ("culled", "thinned", "alpha", "stem_stride", "stem_relu", "blocks")


@dataclass
class Settings:
    epochs: int = 10  # KD training of each candidate
    criticality_epochs: int = 3
    lr: float = 0.05
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    kd: float = 0.9  # weight of the KD term; CE gets 1 - kd
    alphas: list[float] = field(default_factory=lambda: [1.0, 0.5])
    stem_strides: list[int] = field(default_factory=lambda: [1, 2])
    thinning: list[bool] = field(default_factory=lambda: [False, True])
    blocks: list[list[int] | None] = field(default_factory=lambda: [None])
    stage_order: list[int] | None = None  # least critical first; None = measure criticality
    per_budget: int | None = 4  # train the N largest candidates within each budget; None = all
    holdout: float = 0.1  # fraction of the training set held out to rank stages and choose candidates


@dataclass(frozen=True)
class Candidate:
    """One DeepReDuce configuration: build arguments on top of the teacher's."""

    name: str
    kwargs: dict[str, Any]
    relus: int


def base_args(arch_args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in arch_args.items() if k not in CANDIDATE_KEYS}


def candidate_name(culled: Sequence[int], thinned: bool, alpha: float, stride: int, blocks: Sequence[int] | None) -> str:
    parts = [f"cull{''.join(map(str, culled))}" if culled else "cull0"]
    if thinned:
        parts.append("thin")
    if alpha != 1.0:
        parts.append(f"a{alpha:g}")
    if stride != 1:
        parts.append(f"s{stride}")
    if blocks is not None:
        parts.append("b" + "".join(map(str, blocks)))
    return "_".join(parts)


def enumerate_candidates(
    arch: str,
    arch_args: dict[str, Any],
    stage_order: Sequence[int],
    *,
    alphas: Sequence[float] = (1.0, 0.5),
    stem_strides: Sequence[int] = (1, 2),
    thinning: Sequence[bool] = (False, True),
    blocks: Sequence[Sequence[int] | None] = (None,),
) -> list[Candidate]:
    """All culled/thinned/reshaped configurations of a ResNet, with their ReLU counts.

    `stage_order` lists the 1-based stages least critical first; c = 0 .. len-1 of
    them are culled (at least one stage keeps its ReLUs).
    """
    base = base_args(arch_args)
    out = []
    for c in range(len(stage_order)):
        culled = tuple(sorted(stage_order[:c]))
        for thinned, alpha, stride, blk in itertools.product(thinning, alphas, stem_strides, blocks):
            kwargs: dict[str, Any] = dict(culled=list(culled), thinned=bool(thinned), alpha=float(alpha),
                                          stem_stride=int(stride), stem_relu=False)
            if blk is not None:
                kwargs["blocks"] = list(blk)
            relus = count_relus(create_model(arch, **base, **kwargs))
            out.append(Candidate(candidate_name(culled, thinned, alpha, stride, blk), kwargs, relus))
    return out


def _check_resnet(teacher: Teacher) -> int:
    if not isinstance(teacher.model, ResNet):
        raise UsageError(
            f"DeepReDuce applies to ResNet-family models (stages in model.layers); {teacher.card.arch} is not one"
        )
    return len(teacher.model.layers)


def _kd_config(teacher: Teacher, settings: Settings, epochs: int) -> TrainConfig:
    return train_config(teacher, settings, epochs, ce=1.0 - settings.kd, kd=settings.kd)


def _build(teacher: Teacher, kwargs: dict[str, Any]) -> torch.nn.Module:
    """A candidate model, warm-started from the teacher where every tensor shape matches."""
    seed_everything(teacher.seed)
    model = create_model(teacher.card.arch, **base_args(teacher.card.arch_args), **kwargs)
    own = model.state_dict()
    donor = {k: v for k, v in teacher.model.state_dict().items() if not k.endswith(".mask")}
    if all(k in donor and donor[k].shape == v.shape for k, v in own.items() if not k.endswith(".mask")):
        model.load_state_dict({**own, **{k: donor[k] for k in own if not k.endswith(".mask")}})
    return model


def criticality_scores(stages: dict[int, tuple[int, float]], linear_accuracy: float) -> dict[int, float]:
    """C_k = (Acc_k - Acc_lin) / (kappa * ln ReLUs_k) per stage k -> (ReLUs_k, Acc_k); kappa: max C_k = 1."""
    if any(relus < 2 for relus, _ in stages.values()):
        raise UsageError(f"criticality needs at least 2 ReLUs per stage, got {stages}")
    raw = {k: (acc - linear_accuracy) / math.log(relus) for k, (relus, acc) in stages.items()}
    kappa = max(abs(v) for v in raw.values()) or 1.0
    return {k: v / kappa for k, v in raw.items()}


def holdout(teacher: Teacher, settings: Settings) -> tuple[DataLoader, DataLoader]:
    """(train, held-out) loaders: stages are ranked and candidates chosen on the held-out part, never the test set."""
    plain = get_dataset(teacher.card.dataset, "train", teacher.data_dir, augment=False, **teacher.dataset_options)
    return holdout_loaders(teacher.train_loader, plain, settings.holdout, teacher.seed)


def _kd_accuracy(teacher: Teacher, cfg: TrainConfig, loaders: tuple[DataLoader, DataLoader]
                 ) -> Callable[[nn.Module, str], float]:
    """Train a variant with KD for `cfg` on the first loader; its accuracy on the second after the last epoch."""
    train_loader, held_out = loaders

    def train(model: nn.Module, desc: str) -> float:
        history = fit(model, train_loader, held_out, cfg, teacher=teacher.model, device=teacher.device, desc=desc)
        return history[-1] if history else evaluate(model, held_out, teacher.device)

    return train


def criticality(teacher: Teacher, settings: Settings, stages: int,
                train: Callable[[nn.Module, str], float] | None = None) -> dict[str, Any]:
    """Per-stage ReLUs, held-out accuracy and criticality of keep-only-stage-k variants, and the cull order (cached).

    `train(model, description)` trains a variant and returns its accuracy (default: KD for
    `criticality_epochs`, accuracy on the held-out part of the training set); the order is
    least critical first, ties to the lower stage.
    """
    cfg = _kd_config(teacher, settings, settings.criticality_epochs)
    key = settings_key(teacher, "drd-crit-log", asdict(cfg), settings.holdout)
    cache = teacher.cache_dir / f"deepreduce-criticality-{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    train = train or _kd_accuracy(teacher, cfg, holdout(teacher, settings))
    all_stages = list(range(1, stages + 1))
    measured: dict[int, tuple[int, float]] = {}
    for k in [0, *all_stages]:  # 0: the all-linear variant
        model = _build(teacher, dict(culled=[s for s in all_stages if s != k], stem_relu=False))
        measured[k] = (count_relus(model), train(model, f"deepreduce criticality stage {k or 'none'}"))
    linear_accuracy = measured.pop(0)[1]
    scores = criticality_scores(measured, linear_accuracy)
    result: dict[str, Any] = {
        "linear_accuracy": linear_accuracy,
        "stages": {str(k): {"relus": r, "accuracy": a, "criticality": scores[k]} for k, (r, a) in measured.items()},
        "order": sorted(all_stages, key=lambda k: (scores[k], k)),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=1))
    return result


def train_candidate(teacher: Teacher, cand: Candidate, cfg: TrainConfig, folder: Path,
                    loaders: tuple[DataLoader, DataLoader]) -> tuple[float, float]:
    """Train (or reuse from the cache) one candidate on `loaders`' training part.

    Returns its (test accuracy after the last epoch, held-out accuracy): the test accuracy
    is reported, the held-out one chooses.
    """
    if is_model_folder(folder):
        card = load_card(folder)
        return float(card.accuracy), float(card.method_info["holdout_accuracy"])
    train_loader, held_out = loaders
    model = _build(teacher, cand.kwargs)
    history = fit(model, train_loader, teacher.test_loader, cfg, teacher=teacher.model,
                  checkpoint=folder.parent / f"{folder.name}.pt", device=teacher.device,
                  desc=f"deepreduce {cand.name}")
    acc = history[-1] if history else evaluate(model, teacher.test_loader, teacher.device)
    held = evaluate(model, held_out, teacher.device)
    save_model(model.cpu(), folder, dataset=teacher.card.dataset, method="deepreduce", accuracy=acc,
               method_info={"candidate": cand.name, "kwargs": cand.kwargs, "holdout_accuracy": held})
    (folder.parent / f"{folder.name}.pt").unlink(missing_ok=True)
    return acc, held


def paper_step_rank(cand: Candidate) -> tuple:
    """Rank among candidates with equal ReLUs, in the paper's order of steps: cull, then thin, then reshape.

    Fewer reshapings first; thinned before not thinned; of the reshapings, alpha before
    rho (stem stride) before blocks. So at 114,688 ReLUs cull1_thin comes before
    cull1_a0.5 and cull1_b2111, as the paper's C100 models were made.
    """
    k = cand.kwargs
    reshaped = (k["alpha"] != 1.0, k["stem_stride"] != 1, "blocks" in k)
    return sum(reshaped), not k["thinned"], reshaped[::-1]


def select_for_training(candidates: list[Candidate], budgets: list[int], per_budget: int | None) -> list[Candidate]:
    """The candidates worth training: within the largest budget, or the `per_budget` largest under each
    (equal ReLUs ranked by `paper_step_rank`, then by name)."""
    chosen: dict[str, Candidate] = {}
    for budget in budgets:
        fits = sorted((c for c in candidates if c.relus <= budget), key=lambda c: (-c.relus, paper_step_rank(c), c.name))
        for c in fits if per_budget is None else fits[:per_budget]:
            chosen[c.name] = c
    return list(chosen.values())


def plan(arch: str, arch_args: dict[str, Any], budgets: list[int], settings: Settings) -> str | None:
    """What `run` will train, when the stage order is given (None: it follows the measured criticality)."""
    if not settings.stage_order:
        return None
    candidates = enumerate_candidates(arch, arch_args, settings.stage_order, alphas=settings.alphas,
                                      stem_strides=settings.stem_strides, thinning=settings.thinning,
                                      blocks=settings.blocks)
    wanted = sorted(select_for_training(candidates, budgets, settings.per_budget), key=lambda c: -c.relus)
    return f"trains {len(wanted)} candidates: " + ", ".join(f"{c.name} ({c.relus:,})" for c in wanted)


def run(teacher: Teacher, budgets: list[int], outs: list[Path], settings: Settings) -> list:
    """Criticality, candidates within the largest budget, KD training, frontier, selection."""
    stages = _check_resnet(teacher)
    crit = None
    order = list(settings.stage_order or [])
    if not order:
        crit = criticality(teacher, settings, stages)
        order = crit["order"]
    if sorted(order) != list(range(1, stages + 1)):
        raise UsageError(f"stage_order {order} must list each of the stages 1..{stages} once")
    candidates = enumerate_candidates(teacher.card.arch, teacher.card.arch_args, order, alphas=settings.alphas,
                                      stem_strides=settings.stem_strides, thinning=settings.thinning,
                                      blocks=settings.blocks)
    smallest = min(c.relus for c in candidates)
    too_small = [b for b in budgets if b < smallest]
    if too_small:
        raise UsageError(
            f"budget {too_small[0]:,} is below DeepReDuce's smallest candidate ({smallest:,} ReLUs); "
            "add smaller alphas / larger stem_strides, or use senet or snl"
        )
    wanted = select_for_training(candidates, budgets, settings.per_budget)
    cfg = _kd_config(teacher, settings, settings.epochs)
    work = teacher.cache_dir / f"deepreduce-{settings_key(teacher, 'drd-cand', asdict(cfg), settings.holdout)}"
    loaders = holdout(teacher, settings)
    rows = []
    for cand in sorted(wanted, key=lambda c: -c.relus):
        acc, held = train_candidate(teacher, cand, cfg, work / cand.name, loaders)
        rows.append({"candidate": cand.name, "relus": cand.relus, "accuracy": acc, "holdout_accuracy": held,
                     **{k: json.dumps(v) for k, v in cand.kwargs.items()}})
    table = pd.DataFrame(rows)
    frontier = pareto_front(table).reset_index(drop=True)
    cards = []

    for budget, out in zip(budgets, outs):
        fits = table[table["relus"] <= budget].sort_values(["holdout_accuracy", "relus"], ascending=[False, True])
        chosen = fits.iloc[0]
        _, model = load_model(work / chosen["candidate"])
        info = {
            "chosen": chosen["candidate"],
            "stage_order": order,
            "criticality": crit["stages"] if crit else None,
            "linear_accuracy": crit["linear_accuracy"] if crit else None,
            "candidates": table[["candidate", "relus", "accuracy", "holdout_accuracy"]].to_dict("records"),
            "frontier": frontier[["candidate", "relus", "accuracy"]].to_dict("records"),
        }
        card = save_linearized(model, out, teacher, method="deepreduce", budget=budget,
                               accuracy=float(chosen["accuracy"]), settings=settings, method_info=info,
                               budget_reached=f"candidate {chosen['candidate']} ({int(chosen['relus']):,} ReLUs), the "
                               f"most accurate on the held-out {settings.holdout:.0%} of the training set of "
                               f"{len(fits)} trained at or under the budget")
        table.to_csv(out / "candidates.csv", index=False)
        frontier.to_csv(out / "frontier.csv", index=False)
        cards.append(card)
    return cards
