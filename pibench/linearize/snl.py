"""SNL (Cho et al., "Selective Network Linearization for Efficient Private Inference",
ICML 2022): learnable per-pixel ReLU/identity mixing, L1 sparsity, binarize, fine-tune.

Follows the official code (github.com/NYU-DICE-Lab/selective_network_linearization,
snl_finetune_unstructured.py and utils.py):

Search. Every ReLU position gets a learnable alpha, initialized to 1; a layer outputs
alpha*relu(x) + (1-alpha)*x. Alphas and weights train together with one Adam
(`search_lr` 1e-3, no weight decay, alphas neither clipped nor given their own rate) on
CE + kd*KD(T=4) + lambda*||alpha||_1. After each epoch the ReLU count is the number of
alphas above `threshold` (1e-2); lambda (starting at `lam`, 1e-5) is multiplied by
`lambda_growth` (1.1) when the count is not below the lowest count so far and the
(0-based) epoch is at least `lambda_warmup` (5). The search stops at the first epoch
whose count is at or under the budget, after at most `search_epochs` (2000).

Budgets. One search serves all budgets, largest first: the trajectory does not depend
on the budget, only where it stops, so the alphas and weights are snapshot at the
first epoch under each budget and the search stops at the smallest. A snapshot is
binarized to alpha > threshold. If the cap is hit before a budget is reached (the
official code would then exceed the budget), the budget's largest alphas are kept
instead, with a warning; the card's `budget_reached` says which happened.

Fine-tuning (official): SGD lr 1e-3, momentum 0.9 (no Nesterov), weight decay 5e-4,
cosine over `epochs` (100), CE + KD(T=4). The official code keeps the best test epoch;
pibench keeps the last, as for every method (choosing on the test set would flatter SNL).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pibench.modelfolder.folder import is_model_folder, load_card
from pibench.linearize import Teacher, save_linearized, settings_key, train_config
from pibench.linearize.senet import topk_mask
from pibench.relu import masked_relus
from pibench.train import Callback, evaluate, fit, remove_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Settings:
    epochs: int = 100  # KD fine-tuning after binarization
    search_epochs: int = 2000  # at most; the search stops at the smallest budget
    lr: float = 1e-3  # fine-tuning
    optimizer: str = "sgd"  # fine-tuning
    weight_decay: float = 5e-4  # fine-tuning
    schedule: str = "cosine"  # fine-tuning
    search_lr: float = 1e-3  # Adam on weights and alphas together
    lam: float = 1e-5  # initial lambda of the L1 penalty
    lambda_growth: float = 1.1
    lambda_warmup: int = 5  # lambda does not grow before this (0-based) epoch
    threshold: float = 1e-2
    kd: float = 1.0  # KD weight (search and fine-tuning)


@dataclass
class LambdaSchedule:
    """SNL's lambda rule: grow when the count is not below the lowest so far, from epoch `warmup` on."""

    lam: float
    growth: float
    warmup: int
    lowest: int

    def step(self, epoch: int, count: int) -> None:
        if count < self.lowest:
            self.lowest = count
        elif epoch >= self.warmup:
            self.lam *= self.growth


class AlphaSearch(Callback):
    """Per-position alphas on every MaskedReLU (through forward hooks), the L1 term, lambda and stopping."""

    def __init__(self, model: nn.Module, budgets: list[int], settings: Settings) -> None:
        self.settings = settings
        self.model = model
        layers = masked_relus(model)
        self.alphas = nn.ParameterDict(
            {n.replace(".", "/"): nn.Parameter(torch.ones_like(l.mask, dtype=torch.float32)) for n, l in layers.items()}
        )
        self.handles = [layer.register_forward_hook(self._mix(n.replace(".", "/"))) for n, layer in layers.items()]
        self.schedule = LambdaSchedule(settings.lam, settings.lambda_growth, settings.lambda_warmup, self.count())
        self.pending = sorted(budgets, reverse=True)
        self.snapshots: dict[int, dict[str, Any]] = {}
        self.counts: list[int] = []

    def _mix(self, key: str):
        def hook(module: nn.Module, inp: Any, out: torch.Tensor) -> torch.Tensor:
            a = self.alphas[key]
            return a * out + (1 - a) * inp[0]

        return hook

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.alphas.values())}]  # the weights' optimizer settings

    def count(self) -> int:
        return int(sum(int((a > self.settings.threshold).sum()) for a in self.alphas.values()))

    def extra_loss(self) -> torch.Tensor:
        return self.schedule.lam * sum(a.abs().sum() for a in self.alphas.values())

    def end_epoch(self, epoch: int, accuracy: float) -> bool:
        return self.record(epoch, self.count())

    def record(self, epoch: int, count: int) -> bool:
        """Book one finished epoch's ReLU count: snapshots for budgets now reached, lambda; True = stop."""
        self.counts.append(count)
        log.info("SNL search epoch %d: %d ReLUs, lambda %.3g", epoch + 1, count, self.schedule.lam)
        self.schedule.step(epoch, count)
        while self.pending and count <= self.pending[0]:
            budget = self.pending.pop(0)
            self.snapshots[budget] = self.snapshot(epoch)
            log.info("SNL: %d ReLUs after epoch %d, snapshot for budget %d", count, epoch + 1, budget)
        return not self.pending

    def snapshot(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch + 1,
            "alphas": {k: v.detach().clone() for k, v in self.alphas.items()},
            "weights": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "alphas": {k: v.detach().clone() for k, v in self.alphas.items()},
            "schedule": asdict(self.schedule),
            "pending": list(self.pending),
            "snapshots": {str(b): s for b, s in self.snapshots.items()},
            "counts": list(self.counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in state["alphas"].items():
                self.alphas[k].copy_(v)
        self.schedule = LambdaSchedule(**state["schedule"])
        self.pending = [int(b) for b in state["pending"]]
        self.snapshots = {int(b): s for b, s in state["snapshots"].items()}
        self.counts = [int(c) for c in state["counts"]]

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def largest_alphas(alphas: dict[str, torch.Tensor], budget: int) -> dict[str, torch.Tensor]:
    """Masks keeping the `budget` largest alphas over all layers (the fallback when the search cap is hit)."""
    keys = list(alphas)
    flat = torch.cat([alphas[k].flatten() for k in keys])
    keep = topk_mask(flat, budget)
    out, start = {}, 0
    for k in keys:
        n = alphas[k].numel()
        out[k] = keep[start : start + n].view_as(alphas[k])
        start += n
    return out


def run(teacher: Teacher, budgets: list[int], outs: list[Path], settings: Settings) -> list:
    """One alpha search for all budgets, then binarize and fine-tune per budget."""
    model = copy.deepcopy(teacher.model).to(teacher.device)
    search = AlphaSearch(model, budgets, settings)
    work = outs[budgets.index(min(budgets))] / "checkpoints"
    run_key = settings_key(teacher, "snl", sorted(budgets), asdict(settings))
    cfg = train_config(teacher, settings, settings.search_epochs, lr=settings.search_lr, optimizer="adam",
                       weight_decay=0.0, schedule="constant", kd=settings.kd)
    try:
        fit(model, teacher.train_loader, None, cfg, teacher=teacher.model, callback=search,
            checkpoint=work / "snl_search.pt", device=teacher.device, desc="snl search", run_key=run_key)
    finally:
        search.close()
    epochs = len(search.counts)
    for budget in search.pending:
        log.warning("SNL search hit its cap of %d epochs at %d ReLUs, above budget %d; fallback: keeping the %d "
                    "largest alphas", epochs, search.count(), budget, budget)
        search.snapshots[budget] = search.snapshot(epochs - 1)
    cards = []
    for budget, out in zip(budgets, outs):
        if is_model_folder(out):  # finished by an interrupted earlier call with the same budgets
            cards.append(load_card(out))
            continue
        snap = search.snapshots[budget]
        fallback = budget in search.pending
        student = copy.deepcopy(teacher.model)
        student.load_state_dict(snap["weights"])
        alphas = snap["alphas"]
        masks = largest_alphas(alphas, budget) if fallback else {k: a > settings.threshold for k, a in alphas.items()}
        for name, layer in masked_relus(student).items():
            layer.set_mask(masks[name.replace(".", "/")])
        tune = train_config(teacher, settings, settings.epochs, kd=settings.kd, nesterov=False)
        ckpt = out / "checkpoints" / "snl_finetune.pt"
        history = fit(student, teacher.train_loader, teacher.test_loader, tune, teacher=teacher.model,
                      checkpoint=ckpt, device=teacher.device, desc=f"snl finetune {budget}",
                      run_key=f"{run_key} {budget}")
        accuracy = history[-1] if history else evaluate(student, teacher.test_loader, teacher.device)
        reached = (f"fallback: top-B alpha after {epochs} epochs" if fallback
                   else f"search reached budget at epoch {snap['epoch']}")
        info = {
            "search_counts": search.counts,
            "snapshot_epoch": snap["epoch"],
            "final_lambda": search.schedule.lam,
            "threshold": settings.threshold,
            "finetune_history": history,
        }
        cards.append(save_linearized(student, out, teacher, method="snl", budget=budget, accuracy=accuracy,
                                     settings=settings, method_info=info, budget_reached=reached))
        remove_checkpoint(ckpt)
    remove_checkpoint(work / "snl_search.pt")
    return cards
