"""SENet (Kundu et al., "Learning to Linearize Deep Neural Networks for Secure and
Efficient Private Inference", ICLR 2023): sensitivity, allocation, mask search, fine-tune.

1. Sensitivity. A copy of the teacher is trained for `sensitivity_epochs` under global
   magnitude pruning of all conv weights to the proxy density `density` (re-pruned at
   every epoch end, pruned weights held at zero after every step). A ReLU layer's
   sensitivity is eta_l = 1 - d_l, with d_l the surviving density of the conv that
   feeds it. Choices the paper leaves open: the feeding conv is the last k>1 conv
   executed before the ReLU (so a block's post-add ReLU maps to conv2, not to the
   1x1 shortcut); the proxy density is fixed (default 0.1) rather than tied to the
   budget, so one sensitivity serves every budget and is cached per teacher.
2. Allocation. count_l = B * eta_l / sum(eta) over unclipped layers; a layer whose
   share reaches its size keeps all of its ReLUs and the rest is shared again; the
   integer counts use largest remainders and sum exactly to B (to the total if B is
   larger). Layers whose eta is 0 get no ReLUs; if all are 0, shares follow sizes.
3. Mask search. A position's score is how far the student's map there would be from
   the teacher's post-ReLU map if the position were linear: |A_teacher - X_student|,
   with X_student the input of the student's ReLU layer. The paper ranks positions by
   this teacher-student gap of the activation maps and keeps the top count_l per layer;
   it leaves open whether the student side is the masked output, and the masked output
   makes a kept position look unimportant (its gap closes because it is kept), which
   made the selection flip between two sets each epoch (issue 12: Jaccard 0.13 with
   the previous epoch's masks on digits at 20%). Scoring the linear side makes a
   position's score independent of its own mask. The scores start with a pass of the
   all-linear student (teacher weights) and keep accumulating, never reset, over the
   `search_epochs` of training (loss of step 4); the masks are re-selected from the
   running totals at each epoch's end, so later epochs refine rather than replace.
4. Fine-tune with frozen masks: gamma*CE + alpha*KL(T=4) + beta*AT (PRAM; gamma=0.1,
   alpha=0.5, beta=1000), AT on the ResNet stage outputs.

`masks="random"` replaces step 3's choice of positions by random positions with the
same per-layer counts (steps 1-2), trained identically: the ablation that shows the
search matters.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from pibench.errors import UsageError
from pibench.linearize import Teacher, save_linearized, settings_key, train_config
from pibench.relu import masked_relus, relu_counts
from pibench.train import Callback, TrainConfig, evaluate, fit, remove_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Settings:
    epochs: int = 10  # fine-tuning with frozen masks
    search_epochs: int = 3
    sensitivity_epochs: int = 3
    density: float = 0.1  # proxy parameter density of the sparse run
    lr: float = 0.01
    sensitivity_lr: float = 0.01
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    gamma: float = 0.1  # CE weight
    alpha: float = 0.5  # KL weight
    beta: float = 1000.0  # AT weight
    masks: str = "search"  # search | random


# ---------------------------------------------------------------- 1. sensitivity
def relu_feeding_convs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, str]:
    """For every MaskedReLU, the name of the conv (kernel > 1) executed last before it."""
    names = {m: n for n, m in model.named_modules()}
    order: list[tuple[str, nn.Module]] = []
    modules = [m for m in model.modules() if isinstance(m, nn.Conv2d)] + list(masked_relus(model).values())
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append((names[mod], mod))) for m in modules]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    feeding: dict[str, str] = {}
    last_conv = last_any = None
    for name, mod in order:
        if isinstance(mod, nn.Conv2d):
            last_any = name
            if max(mod.kernel_size) > 1:
                last_conv = name
        else:
            feeding[name] = last_conv or last_any
            if feeding[name] is None:
                raise UsageError(f"ReLU layer {name!r} has no conv before it; SENet needs conv-fed ReLUs")
    return feeding


def magnitude_masks(convs: dict[str, nn.Conv2d], density: float) -> dict[str, torch.Tensor]:
    """Global magnitude pruning: keep the `density` fraction of largest |w| over all convs."""
    flat = torch.cat([c.weight.detach().abs().flatten() for c in convs.values()])
    keep = max(1, int(round(density * flat.numel())))
    threshold = torch.topk(flat, keep, sorted=True).values[-1]
    return {n: c.weight.detach().abs() >= threshold for n, c in convs.items()}


class _Pruning(Callback):
    """Holds pruned weights at zero after each step; re-prunes at every epoch end."""

    def __init__(self, convs: dict[str, nn.Conv2d], density: float) -> None:
        self.convs = convs
        self.density = density
        self.masks = magnitude_masks(convs, density)
        self.after_batch()

    @torch.no_grad()
    def after_batch(self) -> None:
        for name, conv in self.convs.items():
            conv.weight.mul_(self.masks[name])

    def end_epoch(self, epoch: int, accuracy: float) -> bool:
        self.masks = magnitude_masks(self.convs, self.density)
        self.after_batch()
        return False


def sensitivity(teacher: Teacher, settings: Settings) -> dict[str, float]:
    """eta_l per ReLU layer from a short sparse-training run; cached in the teacher's cache folder."""
    cfg = train_config(teacher, settings, settings.sensitivity_epochs, lr=settings.sensitivity_lr, schedule="constant")
    key = settings_key(teacher, "senet-sensitivity", asdict(cfg), settings.density)
    cache = teacher.cache_dir / f"senet-sensitivity-{key}.json"
    if cache.is_file():
        log.info("SENet sensitivity from cache %s", cache)
        return json.loads(cache.read_text())["eta"]
    model = copy.deepcopy(teacher.model)
    feeding = relu_feeding_convs(model, teacher.card.input_shape)
    modules = dict(model.named_modules())
    convs = {n: m for n, m in modules.items() if isinstance(m, nn.Conv2d)}
    pruning = _Pruning(convs, settings.density)
    fit(model, teacher.train_loader, None, cfg, callback=pruning, device=teacher.device, desc="senet sensitivity")
    density = {n: float(m.float().mean()) for n, m in pruning.masks.items()}
    eta = {relu: 1.0 - density[conv] for relu, conv in feeding.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"eta": eta, "conv_density": density, "feeding_conv": feeding}, indent=1))
    return eta


# ---------------------------------------------------------------- 2. allocation
def allocate(budget: int, sizes: Sequence[int], weights: Sequence[float]) -> list[int]:
    """Split `budget` over layers in proportion to `weights`, clipped to `sizes`, summing exactly.

    Layers whose proportional share reaches their size are clipped to full and the
    remaining budget is shared among the others, repeatedly; then integer counts are
    taken by largest remainders. With budget >= sum(sizes) every layer is full.
    """
    if len(sizes) != len(weights):
        raise ValueError(f"{len(sizes)} layer sizes but {len(weights)} weights")
    if budget < 0 or any(w < 0 for w in weights):
        raise ValueError("budget and weights must be non-negative")
    if budget >= sum(sizes):
        return list(sizes)
    if sum(w for w, s in zip(weights, sizes) if s > 0) <= 0:
        weights = [float(s) for s in sizes]
    counts = [0] * len(sizes)
    free = [i for i in range(len(sizes)) if sizes[i] > 0 and weights[i] > 0]
    remaining = budget
    while True:
        total_w = sum(weights[i] for i in free)
        shares = {i: remaining * weights[i] / total_w for i in free}
        clipped = [i for i in free if shares[i] >= sizes[i]]
        if not clipped:
            break
        for i in clipped:
            counts[i] = sizes[i]
            remaining -= sizes[i]
        free = [i for i in free if i not in clipped]
    floors = {i: math.floor(shares[i]) for i in free}
    for i in free:
        counts[i] = floors[i]
    leftover = remaining - sum(floors.values())
    by_remainder = sorted(free, key=lambda i: (-(shares[i] - floors[i]), i))
    for i in by_remainder[:leftover]:
        counts[i] += 1
    return counts


# ---------------------------------------------------------------- 3. mask search
def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A boolean mask of `scores`' shape with exactly k True at the k largest scores (ties: lower index)."""
    flat = scores.flatten()
    if not 0 <= k <= flat.numel():
        raise ValueError(f"cannot keep {k} of {flat.numel()} positions")
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    mask[order] = True
    return mask.view_as(scores)


def random_masks(shapes: dict[str, tuple[int, ...]], counts: dict[str, int], seed: int) -> dict[str, torch.Tensor]:
    """Uniformly random positions with the given per-layer counts."""
    gen = torch.Generator().manual_seed(seed)
    return {n: topk_mask(torch.rand(shapes[n], generator=gen), counts[n]) for n in shapes}


class MaskSearch(Callback):
    """Running totals of |A_teacher - X_student| per ReLU position; top-k masks re-selected per epoch.

    `overlaps` holds the Jaccard overlap of each re-selection with the masks it replaces.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, counts: dict[str, int], update: bool = True) -> None:
        self.student_layers = masked_relus(student)
        self.counts = counts
        self.update = update
        self.outputs: dict[tuple[str, str], torch.Tensor] = {}
        self.scores = {n: torch.zeros_like(l.mask, dtype=torch.float32) for n, l in self.student_layers.items()}
        self.overlaps: list[float] = []
        self.handles = [
            layer.register_forward_hook(self._record(side, name))
            for side, model in (("s", student), ("t", teacher))
            for name, layer in masked_relus(model).items()
        ]

    def _record(self, side: str, name: str):
        def hook(module: nn.Module, inp: Any, out: torch.Tensor) -> None:
            # teacher: its post-ReLU map; student: its ReLU layer's input, i.e. the map if linear there
            self.outputs[(side, name)] = (out if side == "t" else inp[0]).detach()

        return hook

    @torch.no_grad()
    def after_batch(self) -> None:
        for name in self.scores:
            diff = (self.outputs[("t", name)] - self.outputs[("s", name)]).abs().sum(0)
            self.scores[name] += diff.to(self.scores[name].device)

    @torch.no_grad()
    def select(self) -> float:
        """Keep the top-k positions per layer by running score; returns the Jaccard overlap with the old masks."""
        kept = union = 0
        for name, layer in self.student_layers.items():
            new = topk_mask(self.scores[name], self.counts[name])
            kept += int((new & layer.mask).sum())
            union += int((new | layer.mask).sum())
            layer.set_mask(new)
        return kept / union if union else 1.0

    @torch.no_grad()
    def score_pass(self, student: nn.Module, teacher: nn.Module, loader, device) -> None:
        """One no-grad pass over `loader` to score positions, then select."""
        student.eval()
        for x, _ in loader:
            x = x.to(device)
            teacher(x)
            student(x)
            self.after_batch()
        self.select()

    def end_epoch(self, epoch: int, accuracy: float) -> bool:
        if self.update:
            self.overlaps.append(self.select())
            log.info("SENet masks after search epoch %d: Jaccard %.3f with the previous masks", epoch + 1,
                     self.overlaps[-1])
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"scores": self.scores, "overlaps": self.overlaps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores = state["scores"]
        self.overlaps = list(state["overlaps"])

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _loss_config(teacher: Teacher, settings: Settings, epochs: int, **overrides: Any) -> TrainConfig:
    """The PRAM loss (step 4), used by the mask search and the fine-tuning."""
    return train_config(teacher, settings, epochs, ce=settings.gamma, kd=settings.alpha, at=settings.beta, **overrides)


def _how_reached(settings: Settings, search: MaskSearch) -> str:
    """SENet spends the budget exactly by allocation; what varies is how the positions were chosen."""
    if settings.masks == "random":
        return "allocation: budget split exactly, random positions"
    text = f"allocation: budget split exactly, positions from {settings.search_epochs} search epochs"
    return text + (f" (last re-selection Jaccard {search.overlaps[-1]:.2f})" if search.overlaps else "")


def linearize_one(teacher: Teacher, budget: int, out: Path, settings: Settings, eta: dict[str, float]):
    """Allocate, search masks and fine-tune one student at `budget`; save it to `out`."""
    student = copy.deepcopy(teacher.model)
    layers = relu_counts(student)
    names = [c.name for c in layers]
    counts = dict(zip(names, allocate(budget, [c.size for c in layers], [eta[n] for n in names])))
    t_model = teacher.model.to(teacher.device).eval()
    student.to(teacher.device)
    student_relus = masked_relus(student)
    ckpt = out / "checkpoints"
    run_key = settings_key(teacher, "senet", budget, asdict(settings))
    if settings.masks == "search":
        search = MaskSearch(student, t_model, counts, update=True)
        with torch.no_grad():
            for layer in student_relus.values():
                layer.mask.zero_()
        search.score_pass(student, t_model, teacher.train_loader, teacher.device)
    else:
        shapes = {c.name: c.shape for c in layers}
        for name, mask in random_masks(shapes, counts, teacher.seed).items():
            student_relus[name].set_mask(mask.to(teacher.device))
        search = MaskSearch(student, t_model, counts, update=False)
    try:
        search_cfg = _loss_config(teacher, settings, settings.search_epochs, schedule="constant")
        fit(student, teacher.train_loader, None, search_cfg, teacher=t_model, callback=search,
            checkpoint=ckpt / "search.pt", device=teacher.device, desc=f"senet search {budget}", run_key=run_key)
    finally:
        search.close()
    tune_cfg = _loss_config(teacher, settings, settings.epochs)
    history = fit(student, teacher.train_loader, teacher.test_loader, tune_cfg, teacher=t_model,
                  checkpoint=ckpt / "finetune.pt", device=teacher.device, desc=f"senet finetune {budget}",
                  run_key=run_key)
    accuracy = history[-1] if history else evaluate(student, teacher.test_loader, teacher.device)
    info = {
        "sensitivity": eta,
        "density": settings.density,
        "allocation": counts,
        "masks": settings.masks,
        "mask_overlaps": search.overlaps,
        "finetune_history": history,
    }
    card = save_linearized(student, out, teacher, method="senet", budget=budget, accuracy=accuracy,
                           settings=settings, method_info=info, budget_reached=_how_reached(settings, search))
    for f in ("search.pt", "finetune.pt"):
        remove_checkpoint(ckpt / f)
    return card


def run(teacher: Teacher, budgets: list[int], outs: list[Path], settings: Settings) -> list:
    """SENet at every budget; the sensitivity run is shared (and cached)."""
    if settings.masks not in ("search", "random"):
        raise UsageError(f"SENet masks must be 'search' or 'random', got {settings.masks!r}")
    eta = sensitivity(teacher, settings)
    log.info("SENet sensitivity: %s", {k: round(v, 3) for k, v in eta.items()})
    return [linearize_one(teacher, b, o, settings, eta) for b, o in zip(budgets, outs)]
