"""Training and evaluation: cross-entropy, Hinton KD, attention transfer, resumable epochs.

One loop (`fit`) serves the baseline and every linearization method. A method adds its
own loss term or per-epoch step through a `Callback`; the loss is

    ce * CE(student) + kd * T^2 KL(teacher_T || student_T) + at * sum_l AT_l

with AT (Zagoruyko & Komodakis, 2017) the squared distance of the L2-normalized
channel-mean-squared attention maps of post-ReLU features (stage outputs of a ResNet,
every ReLU layer otherwise). A checkpoint is written after every epoch; calling `fit`
again with the same checkpoint path, config and run key resumes after the last
finished epoch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pibench.data import dataset_info, dataset_options, make_loaders
from pibench.errors import UsageError
from pibench.modelfolder.folder import save_model
from pibench.models import create_model
from pibench.relu import masked_relus

log = logging.getLogger(__name__)

KD_TEMPERATURE = 4.0
AT_BETA = 1000.0
# What a model card's `accuracy` is, for the teacher and every method (README: "Reported accuracy").
ACCURACY_RULE = ("top-1 on the test set after the last training epoch; choices between trained models "
                 "(DeepReDuce's cull order and candidate) are made on a held-out part of the training set")
# CPU kernels split their sums by thread count, so the count changes the results (digits: other
# weights under OMP_NUM_THREADS=1 and 2). Training on the CPU always uses this many intra-op threads.
CPU_TRAIN_THREADS = 2


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when available, CPU otherwise, unless the caller names one."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def deterministic(device: str | torch.device | None = None) -> Iterator[None]:
    """CPU training whose results do not depend on the environment: a fixed number of intra-op
    threads whatever OMP_NUM_THREADS or torch.set_num_threads say (restored afterwards), and
    deterministic kernels where torch has them. GPU training is left as it is (deterministic
    CUDA kernels would slow the paper configs down)."""
    threads, was_deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if pick_device(device).type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.set_num_threads(CPU_TRAIN_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was_deterministic)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: str | torch.device | None = None) -> float:
    """Top-1 accuracy in percent."""
    device = pick_device(device)
    was_training = model.training
    model.eval().to(device)
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    model.train(was_training)
    return 100.0 * correct / max(total, 1)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = KD_TEMPERATURE) -> torch.Tensor:
    """Hinton KD: T^2 * KL(softmax(teacher/T) || softmax(student/T)), batch mean."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean", log_target=True) * t * t


def attention(features: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """L2-normalized spatial attention map (B, H*W) of a (B, C, H, W) feature map."""
    a = features.pow(2).mean(1, keepdim=True)
    if size is not None and tuple(a.shape[-2:]) != tuple(size):
        a = F.adaptive_avg_pool2d(a, size)
    return F.normalize(a.flatten(1), dim=1)


def at_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention transfer summed over feature pairs; a larger teacher map is pooled to the student's size."""
    if len(student) != len(teacher):
        raise ValueError(f"attention transfer needs matching features: student {len(student)}, teacher {len(teacher)}")
    total = torch.zeros((), device=student[0].device)
    for s, t in zip(student, teacher):
        size = tuple(s.shape[-2:])
        total = total + (attention(s) - attention(t, size)).pow(2).mean()
    return total


def feature_modules(model: nn.Module) -> list[nn.Module]:
    """Where AT taps post-ReLU features: ResNet/WRN stage outputs, else every ReLU layer."""
    layers = getattr(model, "layers", None)
    if isinstance(layers, nn.ModuleList):
        return list(layers)
    return list(masked_relus(model).values())


class FeatureTap:
    """Records the outputs of some modules during forward passes (while attached)."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.outputs: list[torch.Tensor | None] = [None] * len(modules)
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, i: int):
        def record(module: nn.Module, inp: Any, out: torch.Tensor) -> None:
            self.outputs[i] = out

        return record

    def close(self) -> None:
        for h in self._handles:
            h.remove()


class Callback:
    """Method-specific additions to `fit`; every hook is optional."""

    def param_groups(self) -> list[dict[str, Any]]:
        """Extra optimizer parameter groups (e.g. SNL's alphas, trained with the weights)."""
        return []

    def extra_loss(self) -> torch.Tensor | None:
        return None

    def after_batch(self) -> None:
        """Called after each optimizer step (under the batch's forward hooks)."""

    def end_epoch(self, epoch: int, accuracy: float) -> bool:
        """Called after each epoch; return True to stop training early."""
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass
class TrainConfig:
    """Optimizer, schedule and loss weights of one training phase."""

    epochs: int = 10
    lr: float = 0.1
    optimizer: str = "sgd"  # sgd | adam
    momentum: float = 0.9
    nesterov: bool = True  # SGD only
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step | constant
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of epochs (step)
    gamma: float = 0.1  # step decay factor
    ce: float = 1.0
    kd: float = 0.0
    temperature: float = KD_TEMPERATURE
    at: float = 0.0
    seed: int = 0


def _optimizer(params: list, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise UsageError(f"unknown optimizer {cfg.optimizer!r}; use sgd or adam")


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    if cfg.schedule == "step":
        milestones = sorted({max(1, round(m * cfg.epochs)) for m in cfg.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=cfg.gamma)
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    raise UsageError(f"unknown schedule {cfg.schedule!r}; use cosine, step or constant")


def _save_atomic(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    test_loader: DataLoader | None,
    cfg: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    callback: Callback | None = None,
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    desc: str = "train",
    run_key: str = "",
) -> list[float]:
    """Train `model` in place for `cfg.epochs`; returns the test accuracy after each epoch.

    With `checkpoint`, the state after every epoch is saved there and a later call
    resumes from it when it has the same config and `run_key` (what else the run
    depends on, e.g. its teacher, data and budget); otherwise training starts over.
    KD and AT need `teacher`.
    """
    device = pick_device(device)
    callback = callback or Callback()
    if (cfg.kd or cfg.at) and teacher is None:
        raise UsageError("knowledge distillation / attention transfer need a teacher model")
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    params = [{"params": [p for p in model.parameters() if p.requires_grad]}] + callback.param_groups()
    opt = _optimizer(params, cfg)
    sched = _scheduler(opt, cfg)
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    history, start = _resume(ckpt_path, cfg, run_key, model, opt, sched, callback, device, desc)
    use_at = bool(cfg.at) and teacher is not None
    s_tap = FeatureTap(feature_modules(model)) if use_at else None
    t_tap = FeatureTap(feature_modules(teacher)) if use_at else None
    try:
        for epoch in range(start, cfg.epochs):
            _train_epoch(model, train_loader, cfg, epoch, opt, callback, device, teacher, (s_tap, t_tap),
                         f"{desc} {epoch + 1}/{cfg.epochs}")
            sched.step()
            acc = evaluate(model, test_loader, device) if test_loader is not None else float("nan")
            history.append(acc)
            stop = callback.end_epoch(epoch, acc)
            if test_loader is None:
                log.info("%s epoch %d/%d done", desc, epoch + 1, cfg.epochs)
            else:
                log.info("%s epoch %d/%d: test accuracy %.2f%%", desc, epoch + 1, cfg.epochs, acc)
            if ckpt_path is not None:
                state = {"config": asdict(cfg), "run_key": run_key, "epoch": epoch + 1 if not stop else cfg.epochs,
                         "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "callback": callback.state_dict(), "history": history}
                _save_atomic(state, ckpt_path)
            if stop:
                break
    finally:
        for tap in (s_tap, t_tap):
            if tap is not None:
                tap.close()
    return history


def _resume(ckpt_path: Path | None, cfg: TrainConfig, run_key: str, model: nn.Module, opt: torch.optim.Optimizer,
            sched: Any, callback: Callback, device: torch.device, desc: str) -> tuple[list[float], int]:
    """(history, first epoch to run): from `ckpt_path` when it was made by the same config and run key."""
    if ckpt_path is None or not ckpt_path.is_file():
        return [], 0
    state = torch.load(ckpt_path, map_location=device, weights_only=True)
    if state.get("config") != asdict(cfg) or state.get("run_key", "") != run_key:
        log.warning("%s: checkpoint %s was made with other settings; starting over", desc, ckpt_path)
        return [], 0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    callback.load_state_dict(state["callback"])
    log.info("%s: resuming from %s after epoch %d", desc, ckpt_path, int(state["epoch"]))
    return list(state["history"]), int(state["epoch"])


def _train_epoch(model: nn.Module, train_loader: DataLoader, cfg: TrainConfig, epoch: int, opt: torch.optim.Optimizer,
                 callback: Callback, device: torch.device, teacher: nn.Module | None,
                 taps: tuple[FeatureTap | None, FeatureTap | None], desc: str) -> None:
    """One pass over the training data, seeded by the epoch (so a resumed run draws the same batches)."""
    seed_everything(cfg.seed + epoch)
    generator = getattr(train_loader, "generator", None)
    if generator is not None:
        generator.manual_seed(cfg.seed + epoch)
    model.train()
    s_tap, t_tap = taps
    bar = tqdm(train_loader, desc=desc, leave=False, disable=None)
    for x, y in bar:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        t_logits = None
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(x)
        logits = model(x)
        loss = cfg.ce * F.cross_entropy(logits, y)
        if cfg.kd:
            loss = loss + cfg.kd * kd_loss(logits, t_logits, cfg.temperature)
        if s_tap is not None:
            loss = loss + cfg.at * at_loss(s_tap.outputs, t_tap.outputs)
        extra = callback.extra_loss()
        if extra is not None:
            loss = loss + extra
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        callback.after_batch()
        bar.set_postfix(loss=f"{loss.item():.3f}")


def train_baseline(
    arch: str,
    dataset: str,
    out_folder: str | Path,
    *,
    epochs: int = 30,
    lr: float = 0.1,
    batch_size: int = 128,
    optimizer: str = "sgd",
    weight_decay: float = 5e-4,
    schedule: str = "cosine",
    nesterov: bool = True,
    init: str = "default",
    data_dir: str | None = None,
    seed: int = 0,
    device: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    train_subset: int | None = None,
):
    """Train an all-ReLU model from scratch and save it as a model folder (the teacher).

    The model is built for the dataset's input shape and class count (arch_kwargs may
    override, e.g. input_size=16 with upsampled digits). `init` is "default" (torch's) or
    "kaiming_normal" (conv weights ~ N(0, 2 / fan_out), torchvision's ResNet init; the SNL paper
    config's teacher uses it). Returns the ModelCard.
    """
    info = dataset_info(dataset)
    build = {"in_chans": info.in_chans, "input_size": info.input_size, "num_classes": info.num_classes, **(arch_kwargs or {})}
    seed_everything(seed)
    model = create_model(arch, **build)
    initialize(model, init)
    args = model.pibench_args
    options = dataset_options(dataset, (args["in_chans"], args["input_size"], args["input_size"]), args["num_classes"])
    train_loader, test_loader = make_loaders(
        dataset, data_dir, batch_size=batch_size, seed=seed, train_subset=train_subset, **options
    )
    cfg = TrainConfig(epochs=epochs, lr=lr, optimizer=optimizer, weight_decay=weight_decay, schedule=schedule,
                      nesterov=nesterov, seed=seed)
    out = Path(out_folder)
    ckpt = out / "checkpoints" / "train.pt"
    run_key = json.dumps([arch, dataset, build, options, batch_size, train_subset, init], sort_keys=True)
    with deterministic(device):
        history = fit(model, train_loader, test_loader, cfg, checkpoint=ckpt, device=device, desc=f"train {arch}",
                      run_key=run_key)
    accuracy = history[-1] if history else evaluate(model, test_loader, device)
    provenance = {"accuracy_rule": ACCURACY_RULE,
                  "train": {**asdict(cfg), "batch_size": batch_size, "dataset_options": options, "history": history}}
    card = save_model(model.cpu(), out, dataset=dataset, method="baseline", accuracy=accuracy, provenance=provenance)
    remove_checkpoint(ckpt)
    return card


@torch.no_grad()
def initialize(model: nn.Module, init: str) -> None:
    """Re-initialize conv weights: "kaiming_normal" draws N(0, 2 / fan_out); "default" keeps torch's."""
    if init == "default":
        return
    if init != "kaiming_normal":
        raise UsageError(f"unknown init {init!r}; use default or kaiming_normal")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def remove_checkpoint(path: Path) -> None:
    """Drop a finished run's resume file, and its folder once nothing else is in it."""
    path.unlink(missing_ok=True)
    if path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()
