"""ReLU linearization methods (DeepReDuce, SENet, SNL, and plug-ins) behind one registry and one API.

    linearize(method, teacher_folder, budget, out_folder, ...)         -> ModelCard
    linearize_many(method, teacher_folder, budgets, out_folders, ...)  -> [ModelCard]

The teacher is an all-ReLU model folder (`pibench train`). A method module exposes
`Settings` (a dataclass of its knobs, `epochs` being its main training length) and
`run(teacher, budgets, out_folders, settings) -> [ModelCard]`; it gets all budgets at
once so that teacher-level work (DeepReDuce's criticality and candidates, SENet's
sensitivity, SNL's alpha search) is done once. Work that outlives a call is cached
under `<teacher>/cache/` (or `cache_dir`), keyed by the settings that produced it.

Methods are found by name: the built-in three and every method an installed package
declares in the `pibench.methods` entry-point group (`name = "module"` or
`"module:attr"`) register alike, as a "module[:attr]" target imported on first use;
a method not installed can also be named by its target itself (`--method mypkg.mymethod`).
docs/plugin-methods.md shows a plug-in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import typing
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import nn
from torch.utils.data import DataLoader

from pibench.data import dataset_options, make_loaders
from pibench.errors import UnknownName, UsageError
from pibench.modelfolder.folder import load_model, save_model
from pibench.registry import Registry
from pibench.relu import count_relus, relu_counts
from pibench.settings import check_types, parse_budget
from pibench.train import ACCURACY_RULE, TrainConfig, deterministic, pick_device

log = logging.getLogger(__name__)

ENTRY_POINTS = "pibench.methods"  # the entry-point group plug-in packages declare their methods in
BUILTIN = {"deepreduce": "pibench.linearize.deepreduce", "senet": "pibench.linearize.senet",
           "snl": "pibench.linearize.snl"}


def _method_table() -> Registry[str]:
    """Method name -> "module[:attr]" of what implements it: the built-in three, then the installed plug-ins."""
    table: Registry[str] = Registry("linearization method")
    declared = [(ep.name, ep.value) for ep in importlib.metadata.entry_points(group=ENTRY_POINTS)]
    for name, target in [*BUILTIN.items(), *declared]:
        if name in table:
            log.warning("linearization method %r is declared twice; %s is ignored", name, target)
            continue
        table.register(name, target)
    return table


METHODS = _method_table()


@dataclass
class Teacher:
    """The all-ReLU model a method starts from, with the data it was trained on."""

    folder: Path
    card: Any  # pibench.modelfolder.folder.ModelCard
    model: nn.Module
    train_loader: DataLoader
    test_loader: DataLoader
    dataset_options: dict[str, Any]
    device: Any
    seed: int
    cache_dir: Path
    batch_size: int
    data_dir: str | None = None

    @property
    def relus(self) -> int:
        return int(self.card.relus)


def method_module(name: str) -> Any:
    """What implements method `name` (a module or an object with `Settings` and `run`), imported now.

    `name` is a registered method, or a "module[:attr]" target (any name with a dot or a colon).
    Raises UnknownName for a name no package declares, UsageError for a target without the contract.
    """
    target = name if (name not in METHODS and ("." in name or ":" in name)) else METHODS.get(name)
    module_name, _, attr = target.partition(":")
    try:
        method = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:  # the method's own imports failed: a bug to see in full
            raise
        raise UnknownName(f"linearization method {name!r}: no module {module_name!r}; "
                          f"{METHODS.unknown_message(name)}") from None
    for part in filter(None, attr.split(".")):
        method = getattr(method, part)
    if not (dataclasses.is_dataclass(getattr(method, "Settings", None)) and callable(getattr(method, "run", None))):
        raise UsageError(f"linearization method {name!r} ({target}) has no Settings dataclass and run(teacher, "
                         "budgets, out_folders, settings); see docs/plugin-methods.md")
    return method


def make_settings(method: str, epochs: int | None = None, **kwargs: Any):
    """The method's Settings with caller overrides (None values ignored); unknown keys and wrong types raise."""
    cls = method_module(method).Settings
    values = {k: v for k, v in {**kwargs, "epochs": epochs}.items() if v is not None}
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        known = ", ".join(f.name for f in dataclasses.fields(cls))
        raise UsageError(f"unknown {method} settings {unknown}; known: {known}")
    check_types(values, typing.get_type_hints(cls), f"{method} setting")
    return cls(**values)


def plan(method: str, arch: str, arch_args: dict[str, Any], budgets: Sequence[int], **kwargs: Any) -> str | None:
    """What a method will train for these budgets, when that is known before training (for dry runs)."""
    module = method_module(method)
    if not hasattr(module, "plan"):
        return None
    return module.plan(arch, arch_args, list(budgets), make_settings(method, **kwargs))


def load_teacher(
    teacher_folder: str | Path,
    *,
    data_dir: str | None = None,
    batch_size: int = 128,
    seed: int = 0,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    train_subset: int | None = None,
) -> Teacher:
    """Load a teacher folder (weights included) and loaders for its dataset."""
    folder = Path(teacher_folder)
    card, model = load_model(folder)
    if any(c.relus != c.size for c in relu_counts(model)):
        raise UsageError(f"{folder}: the teacher must keep all of its ReLUs (it has {card.relus:,}); use a baseline model")
    options = dataset_options(card.dataset, card.input_shape, card.num_classes)
    train_loader, test_loader = make_loaders(
        card.dataset, data_dir, batch_size=batch_size, seed=seed, train_subset=train_subset, **options
    )
    return Teacher(
        folder=folder,
        card=card,
        model=model,
        train_loader=train_loader,
        test_loader=test_loader,
        dataset_options=options,
        device=pick_device(device),
        seed=seed,
        cache_dir=Path(cache_dir) if cache_dir is not None else folder / "cache",
        batch_size=batch_size,
        data_dir=data_dir,
    )


def settings_key(teacher: Teacher, *parts: Any) -> str:
    """A short digest naming cached work: teacher weights, data, seed, batch size and the given settings."""
    data = [len(teacher.train_loader.dataset), teacher.dataset_options]
    payload = json.dumps([teacher.card.weights_sha256, data, teacher.seed, teacher.batch_size, *parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def train_config(teacher: Teacher, settings: Any, epochs: int, **overrides: Any):
    """A method's training phase: its settings' optimizer and schedule, the teacher's seed; `overrides` win."""
    base = dict(epochs=epochs, lr=settings.lr, optimizer=settings.optimizer, weight_decay=settings.weight_decay,
                schedule=settings.schedule, seed=teacher.seed)
    return TrainConfig(**{**base, **overrides})


def provenance(teacher: Teacher, method: str, settings: Any) -> dict[str, Any]:
    return {
        "accuracy_rule": ACCURACY_RULE,
        "teacher": str(teacher.folder),
        "teacher_weights_sha256": teacher.card.weights_sha256,
        "teacher_accuracy": teacher.card.accuracy,
        "method": method,
        "settings": dataclasses.asdict(settings),
        "seed": teacher.seed,
        "batch_size": teacher.batch_size,
        "dataset_options": teacher.dataset_options,
    }


def save_linearized(
    model: nn.Module,
    out_folder: str | Path,
    teacher: Teacher,
    *,
    method: str,
    budget: int,
    accuracy: float,
    settings: Any,
    method_info: dict[str, Any],
    budget_reached: str,
):
    """Save a linearized model, refusing one over its budget (that would be a method bug).

    `budget_reached` says how the method met the budget (e.g. SNL's search vs its fallback).
    """
    kept = count_relus(model)
    if kept > budget:
        raise RuntimeError(f"{method} produced {kept:,} ReLUs for a budget of {budget:,}")
    return save_model(
        model.cpu(),
        out_folder,
        dataset=teacher.card.dataset,
        method=method,
        budget=budget,
        accuracy=accuracy,
        provenance=provenance(teacher, method, settings),
        method_info=method_info,
        budget_reached=budget_reached,
    )


def linearize_many(
    method: str,
    teacher_folder: str | Path,
    budgets: Sequence[int | str | float],
    out_folders: Sequence[str | Path],
    *,
    data_dir: str | None = None,
    epochs: int | None = None,
    seed: int = 0,
    batch_size: int = 128,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    train_subset: int | None = None,
    **method_kwargs: Any,
) -> list:
    """Linearize one teacher at several budgets, sharing the teacher-level work.

    Budgets are counts or strings ("50k", "0.1" = 10% of the teacher's ReLUs); returns
    one ModelCard per budget, in the order given.
    """
    if len(budgets) != len(out_folders):
        raise UsageError(f"{len(budgets)} budgets but {len(out_folders)} output folders")
    if not budgets:
        raise UsageError("no budgets given")
    module = method_module(method)
    settings = make_settings(method, epochs, **method_kwargs)
    teacher = load_teacher(
        teacher_folder,
        data_dir=data_dir,
        batch_size=batch_size,
        seed=seed,
        device=device,
        cache_dir=cache_dir,
        train_subset=train_subset,
    )
    counts = [parse_budget(b, teacher.relus) for b in budgets]
    log.info("%s on %s (%s ReLUs): budgets %s", method, teacher.folder, f"{teacher.relus:,}", counts)
    with deterministic(teacher.device):
        return module.run(teacher, counts, [Path(o) for o in out_folders], settings)


def linearize(
    method: str,
    teacher_folder: str | Path,
    budget: int | str | float,
    out_folder: str | Path,
    **kwargs: Any,
):
    """Linearize a teacher at one ReLU budget; see `linearize_many` for the options."""
    return linearize_many(method, teacher_folder, [budget], [out_folder], **kwargs)[0]
