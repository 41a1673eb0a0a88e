"""Linearized model folders: a public part (what fixes the protocol) and a private part (the server's).

    models/<name>/model.json          public: architecture, input shape, classes, dataset name,
                                      per-layer kept ReLU counts, the masks' digest
    models/<name>/masks.safetensors   public: one boolean (C, H, W) mask per ReLU layer
    models/<name>/private.json        private: name, method, budget, accuracy, training recipe
                                      and seeds (provenance), method details, the weights' digest
    models/<name>/weights.safetensors private: parameters and BN statistics

The client of a secure inference needs the architecture and the masks (they fix the
protocol) but must never read the weights, nor anything that would let it rebuild
them: with the recipe and seed of a model trained on a public dataset, re-training
gives the weights bit for bit (and a weight digest confirms it). So the card is split,
and `public_card_json` is all a client is handed. Folders written before the split
(one model.json with every field) still load; `public_card_json` strips them.
Nothing is unpickled: tensors live in safetensors files.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pibench.errors import PibenchError, UsageError
from pibench.models import MODELS, create_model
from pibench.relu import get_masks, masked_relus, relu_counts, set_masks

FORMAT = "pibench-model/1"
CARD_FILE = "model.json"
PRIVATE_CARD_FILE = "private.json"
PROGRAM_FILE = "program.json"  # program folders (`pibench.export`, `pibench import`): the public program
PROGRAM_ARCH = "program"  # the card's `arch` of a program folder; its arch_args carry the program's sha256
MASKS_FILE = "masks.safetensors"
WEIGHTS_FILE = "weights.safetensors"
# What the client may know: exactly what `public_hash` covers, plus the dataset name (for its inputs),
# the kept counts and the masks' digest (both follow from the masks).
PUBLIC_FIELDS = ("format", "arch", "arch_args", "dataset", "input_shape", "num_classes", "relus", "layers",
                 "masks_sha256")


class CheckpointError(PibenchError, ValueError):
    """A model folder that cannot be loaded; the message names the file and the problem."""


@dataclass
class ModelCard:
    """A model folder's description: `PUBLIC_FIELDS` in model.json, the rest in private.json."""

    name: str
    arch: str
    arch_args: dict[str, Any]
    dataset: str
    input_shape: list[int]
    num_classes: int
    method: str = "baseline"
    budget: int | None = None
    relus: int = 0
    layers: list[dict[str, Any]] = field(default_factory=list)
    accuracy: float | None = None
    budget_reached: str = ""  # how a method met its budget, e.g. "search reached budget at epoch 12"
    provenance: dict[str, Any] = field(default_factory=dict)
    method_info: dict[str, Any] = field(default_factory=dict)
    masks_sha256: str = ""
    weights_sha256: str = ""
    format: str = FORMAT

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k in PUBLIC_FIELDS}

    def private(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in PUBLIC_FIELDS}


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def _write_atomic(path: Path, text: str, mode: int) -> None:
    """Write `text` beside `path` and rename it over; the file has `mode` from its creation on."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # os.open's mode applies only to a file it creates
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w") as f:
        os.fchmod(f.fileno(), mode)  # the umask may have narrowed it
        f.write(text)
    tmp.replace(path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The private tensors of a model: its state dict without the (public) masks."""
    masks = {f"{name}.mask" for name in masked_relus(model)}
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in masks}


def save_model(
    model: nn.Module,
    folder: str | Path,
    *,
    dataset: str,
    method: str = "baseline",
    budget: int | None = None,
    accuracy: float | None = None,
    provenance: dict[str, Any] | None = None,
    method_info: dict[str, Any] | None = None,
    budget_reached: str = "",
) -> ModelCard:
    """Write a model built by `create_model` as a model folder; returns its card."""
    if not hasattr(model, "pibench_arch"):
        raise UsageError("save_model needs a model built by pibench.models.create_model")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    masks = {k: v.cpu().contiguous() for k, v in get_masks(model).items()}
    save_file(masks, folder / MASKS_FILE)
    (folder / MASKS_FILE).chmod(0o644)  # public (the client's copy); the weights keep safetensors' 0600
    save_file(weights_state(model), folder / WEIGHTS_FILE)
    args = dict(model.pibench_args)
    counts = relu_counts(model)
    card = ModelCard(
        name=folder.name,
        arch=model.pibench_arch,
        arch_args=args,
        dataset=dataset,
        input_shape=[args["in_chans"], args["input_size"], args["input_size"]],
        num_classes=args["num_classes"],
        method=method,
        budget=budget,
        relus=sum(c.relus for c in counts),
        layers=[{"name": c.name, "shape": list(c.shape), "relus": c.relus} for c in counts],
        accuracy=accuracy,
        budget_reached=budget_reached,
        provenance=provenance or {},
        method_info=method_info or {},
        masks_sha256=sha256_file(folder / MASKS_FILE),
        weights_sha256=sha256_file(folder / WEIGHTS_FILE),
    )
    write_card(folder, card)
    return card


def write_card(folder: Path, card: ModelCard) -> None:
    """The cards of a folder whose tensors are written: private.json (server only), then model.json.

    The public card is written last, so a folder with a model.json is complete.
    """
    (folder / WEIGHTS_FILE).chmod(0o600)
    _write_atomic(folder / PRIVATE_CARD_FILE, _json(card.private()), 0o600)
    _write_atomic(folder / CARD_FILE, _json(card.public()), 0o644)


def is_model_folder(path: str | Path) -> bool:
    return (Path(path) / CARD_FILE).is_file()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the file is corrupt, re-export the model") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: not a pibench model card (a JSON object)")
    return raw


def load_card(folder: str | Path) -> ModelCard:
    """Read and validate model.json, and private.json where present (the server's side, training, reports).

    The client's copy of a folder has no private.json: its card carries the folder's name
    and defaults for the private fields.
    """
    folder = Path(folder)
    path = folder / CARD_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; a model folder needs {CARD_FILE}, {MASKS_FILE}, {WEIGHTS_FILE}")
    raw = _read_json(path)
    if raw.get("format") != FORMAT:
        raise CheckpointError(f'{path}: not a pibench model card (expected "format": "{FORMAT}")')
    private_path = folder / PRIVATE_CARD_FILE
    if private_path.is_file():
        private = _read_json(private_path)
        leaked = sorted(set(private) & set(PUBLIC_FIELDS))
        if leaked:
            raise CheckpointError(f"{private_path}: holds public fields {leaked}; they belong in {CARD_FILE}")
        raw = {**raw, **private}
    raw.setdefault("name", folder.resolve().name)
    known = set(ModelCard.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    missing = sorted(k for k in ("arch", "arch_args", "dataset", "input_shape", "num_classes") if k not in raw)
    if unknown or missing:
        raise CheckpointError(f"{path}: missing fields {missing}, unknown fields {unknown}")
    if raw["arch"] not in MODELS and raw["arch"] != PROGRAM_ARCH:
        raise CheckpointError(f"{path}: {MODELS.unknown_message(raw['arch'])}")
    return ModelCard(**raw)


def public_card_json(folder: str | Path) -> str:
    """model.json as the client may see it: only `PUBLIC_FIELDS`, also for a folder written before the split."""
    return _json(load_card(folder).public())


def _load_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} file is missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read {what} ({e}); the file is truncated or corrupt") from e


def _check_hash(path: Path, expected: str, what: str) -> None:
    if expected and sha256_file(path) != expected:
        raise CheckpointError(
            f"{path}: {what} do not match the sha256 recorded in {CARD_FILE}; the file was changed or is corrupt"
        )


def load_public(folder: str | Path) -> tuple[ModelCard, nn.Module]:
    """Build the model from the public part only: architecture and masks, random weights.

    This never opens the weights file, so the client party can call it.
    """
    folder = Path(folder)
    card = load_card(folder)
    model = create_model(card.arch, **card.arch_args)
    masks_path = folder / MASKS_FILE
    masks = _load_tensors(masks_path, "masks")
    _check_hash(masks_path, card.masks_sha256, "masks")
    try:
        set_masks(model, masks)
    except ValueError as e:
        raise CheckpointError(f"{masks_path}: {e}") from e
    counts = relu_counts(model)
    args = model.pibench_args
    derived = {"input_shape": [args["in_chans"], args["input_size"], args["input_size"]],
               "num_classes": args["num_classes"], "relus": sum(c.relus for c in counts),
               "layers": [{"name": c.name, "shape": list(c.shape), "relus": c.relus} for c in counts]}
    for key, value in derived.items():  # what the card says must be what its architecture and masks give
        if card.layers and getattr(card, key) != value:
            raise CheckpointError(f"{folder / CARD_FILE}: '{key}' does not match the architecture and "
                                  f"{MASKS_FILE}; the card was edited or is corrupt, re-export the model")
    return card, model


def load_model(folder: str | Path) -> tuple[ModelCard, nn.Module]:
    """Public part plus the private weights (server side, training, evaluation)."""
    folder = Path(folder)
    card, model = load_public(folder)
    weights_path = folder / WEIGHTS_FILE
    state = _load_tensors(weights_path, "weights")
    _check_hash(weights_path, card.weights_sha256, "weights")
    expected = weights_state(model)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{weights_path}: weights do not fit {card.arch}: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    bad = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if bad:
        raise CheckpointError(f"{weights_path}: tensors with the wrong shape for {card.arch}: {bad[:5]}")
    model.load_state_dict(state, strict=False)
    model.eval()
    return card, model


def public_hash(folder: str | Path) -> str:
    """A digest of what fixes the secure protocol: architecture, input shape and masks.

    A program folder's architecture is its program: `arch_args` holds program.json's sha256.

    Two parties compare it at start-up so they never run different protocols. Names,
    accuracies and weights do not enter it.
    """
    card = load_card(folder)
    protocol = {k: getattr(card, k) for k in ("arch", "arch_args", "input_shape", "num_classes")}
    h = hashlib.sha256(json.dumps(protocol, sort_keys=True).encode())
    h.update(sha256_file(Path(folder) / MASKS_FILE).encode())
    return h.hexdigest()
