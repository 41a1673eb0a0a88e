"""SNL (Cho et al., "Selective Network Linearization for Efficient Private Inference",
ICML 2022): learnable per-pixel ReLU/identity mixing, L1 sparsity, binarize, fine-tune.

Search. Every ReLU position gets a learnable alpha (initialized to 1), and a layer
outputs alpha*relu(x) + (1-alpha)*x. The student (teacher weights) trains alphas and
weights jointly on CE + kd*KD(T=4) + lambda*||alpha||_1; after each epoch, lambda is
multiplied by `lambda_growth` (1.1) if the count of alphas above `threshold` (1e-2)
did not fall. Choices the paper leaves open: alphas are clipped to [0, 1] after each
step and get their own learning rate (`alpha_lr`, no weight decay) in the search's
optimizer (`search_optimizer`, Adam by default, so they move at a steady rate whatever
the scale of the loss); the weights train without weight decay during the search; the
L1 term is the plain sum over positions.

Budgets. One search serves all budgets, largest first: when the count first drops to
or below a budget, the alphas and weights are snapshot for it, and the search stops
at the smallest budget (or after `search_epochs`). A snapshot is binarized to
alpha > threshold; if that keeps more than the budget (only when the search ran out
of epochs), the budget's largest alphas are kept instead. Each binarized student is
fine-tuned with CE + KD for `epochs`.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pibench.checkpoint import is_model_folder, load_card
from pibench.linearize import Teacher, save_linearized, settings_key, train_config
from pibench.linearize.senet import topk_mask
from pibench.relu import masked_relus
from pibench.train import Callback, evaluate, fit, remove_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Settings:
    epochs: int = 10  # KD fine-tuning after binarization
    search_epochs: int = 60  # at most; the search stops at the smallest budget
    lr: float = 0.01  # fine-tuning
    optimizer: str = "sgd"  # fine-tuning
    search_lr: float = 1e-3  # weights during the search
    search_optimizer: str = "adam"
    alpha_lr: float = 0.01
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    lam: float = 1e-4  # initial lambda of the L1 penalty
    lambda_growth: float = 1.1
    threshold: float = 1e-2
    kd: float = 1.0  # KD weight (search and fine-tuning)


class AlphaSearch(Callback):
    """Per-position alphas on every MaskedReLU (through forward hooks), the L1 term and lambda schedule."""

    def __init__(self, model: nn.Module, budgets: list[int], settings: Settings) -> None:
        self.settings = settings
        self.model = model
        layers = masked_relus(model)
        self.alphas = nn.ParameterDict(
            {n.replace(".", "/"): nn.Parameter(torch.ones_like(l.mask, dtype=torch.float32)) for n, l in layers.items()}
        )
        self.handles = [layer.register_forward_hook(self._mix(n.replace(".", "/"))) for n, layer in layers.items()]
        self.lam = settings.lam
        self.previous = self.count()
        self.pending = sorted(budgets, reverse=True)
        self.snapshots: dict[int, dict[str, Any]] = {}
        self.counts: list[int] = []

    def _mix(self, key: str):
        def hook(module: nn.Module, inp: Any, out: torch.Tensor) -> torch.Tensor:
            a = self.alphas[key]
            return a * out + (1 - a) * inp[0]

        return hook

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.alphas.values()), "lr": self.settings.alpha_lr, "weight_decay": 0.0}]

    def count(self) -> int:
        return int(sum(int((a > self.settings.threshold).sum()) for a in self.alphas.values()))

    def extra_loss(self) -> torch.Tensor:
        return self.lam * sum(a.abs().sum() for a in self.alphas.values())

    @torch.no_grad()
    def after_batch(self) -> None:
        for a in self.alphas.values():
            a.clamp_(0.0, 1.0)

    def end_epoch(self, epoch: int, accuracy: float) -> bool:
        count = self.count()
        self.counts.append(count)
        while self.pending and count <= self.pending[0]:
            budget = self.pending.pop(0)
            self.snapshots[budget] = self.snapshot(epoch)
            log.info("SNL: %d ReLUs after epoch %d, snapshot for budget %d", count, epoch + 1, budget)
        if count >= self.previous:
            self.lam *= self.settings.lambda_growth
        self.previous = count
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
            "lam": self.lam,
            "previous": self.previous,
            "pending": list(self.pending),
            "snapshots": {str(b): s for b, s in self.snapshots.items()},
            "counts": list(self.counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in state["alphas"].items():
                self.alphas[k].copy_(v)
        self.lam = float(state["lam"])
        self.previous = int(state["previous"])
        self.pending = [int(b) for b in state["pending"]]
        self.snapshots = {int(b): s for b, s in state["snapshots"].items()}
        self.counts = [int(c) for c in state["counts"]]

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def binarize(alphas: dict[str, torch.Tensor], budget: int, threshold: float) -> dict[str, torch.Tensor]:
    """Masks alpha > threshold; if that exceeds `budget`, the `budget` largest alphas overall."""
    masks = {k: a > threshold for k, a in alphas.items()}
    if sum(int(m.sum()) for m in masks.values()) <= budget:
        return masks
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
    cfg = train_config(teacher, settings, settings.search_epochs, lr=settings.search_lr,
                       optimizer=settings.search_optimizer, weight_decay=0.0, schedule="constant", kd=settings.kd)
    try:
        fit(model, teacher.train_loader, None, cfg, teacher=teacher.model, callback=search,
            checkpoint=work / "snl_search.pt", device=teacher.device, desc="snl search", run_key=run_key)
    finally:
        search.close()
    for budget in search.pending:  # not reached within search_epochs: keep the largest alphas
        log.warning("SNL search ended at %d ReLUs above budget %d; keeping the largest alphas", search.count(), budget)
        search.snapshots[budget] = search.snapshot(len(search.counts) - 1)
    cards = []
    for budget, out in zip(budgets, outs):
        if is_model_folder(out):  # finished by an interrupted earlier call with the same budgets
            cards.append(load_card(out))
            continue
        snap = search.snapshots[budget]
        student = copy.deepcopy(teacher.model)
        student.load_state_dict(snap["weights"])
        masks = binarize(snap["alphas"], budget, settings.threshold)
        for name, layer in masked_relus(student).items():
            layer.set_mask(masks[name.replace(".", "/")])
        tune = train_config(teacher, settings, settings.epochs, kd=settings.kd)
        ckpt = out / "checkpoints" / "snl_finetune.pt"
        history = fit(student, teacher.train_loader, teacher.test_loader, tune, teacher=teacher.model,
                      checkpoint=ckpt, device=teacher.device, desc=f"snl finetune {budget}",
                      run_key=f"{run_key} {budget}")
        accuracy = history[-1] if history else evaluate(student, teacher.test_loader, teacher.device)
        info = {
            "search_counts": search.counts,
            "snapshot_epoch": snap["epoch"],
            "final_lambda": search.lam,
            "threshold": settings.threshold,
            "finetune_history": history,
        }
        cards.append(save_linearized(student, out, teacher, method="snl", budget=budget, accuracy=accuracy,
                                     settings=settings, method_info=info))
        remove_checkpoint(ckpt)
    remove_checkpoint(work / "snl_search.pt")
    return cards
