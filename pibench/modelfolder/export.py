"""Export any traceable PyTorch model as a pibench model folder whose public part is its MPC program.

    card = pibench.export(model, torch.randn(1, 3, 32, 32), "models/mynet", dataset="cifar10")

A registry model folder names an architecture the client rebuilds from pibench's own
classes; an exported folder instead holds the compiled program, so the client needs
no Python class of the user's:

    models/<name>/model.json          public: card (arch "program", arch_args: the program's sha256)
    models/<name>/program.json        public: the compiled program (ops, shapes, strides; no weights)
    models/<name>/masks.safetensors   public: kept positions of each partially kept ReLU layer
    models/<name>/private.json        private: name, method, accuracy, provenance (export or onnx,
                                      torch/onnx versions, the source file's sha256), weights digest
    models/<name>/weights.safetensors private: the program's weights (BatchNorm already folded)

`pibench.modelfolder.onnx_import` writes the same kind of folder from an ONNX file.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pibench.errors import UsageError
from pibench.modelfolder.folder import (CARD_FILE, MASKS_FILE, PROGRAM_ARCH, PROGRAM_FILE, WEIGHTS_FILE,
                                        CheckpointError, ModelCard, sha256_file, write_card)
from pibench.mpc.backend import run_plain
from pibench.mpc.compiler import compile_model
from pibench.mpc.program import CompileError, Program, program_from_json, program_to_json, program_weights
from pibench.mpc.rewrites import dropped_final, final_note

log = logging.getLogger(__name__)


def export(model: nn.Module, example_input: torch.Tensor, folder: str | Path,
           masks: dict[str, torch.Tensor] | None = None, *, name: str | None = None, dataset: str = "random",
           accuracy: float | None = None, method: str = "export") -> ModelCard:
    """Compile `model` (traced with torch.fx) and write it as a model folder; returns its card.

    `example_input` is one input batch, e.g. torch.randn(1, 3, 32, 32): its per-sample
    shape is the program's. `masks` ({ReLU layer name: boolean per-sample mask}) linearize
    ReLUs; without them a `MaskedReLU` keeps its mask and a layer with SNL-style `alphas`
    keeps its ReLU where alpha > 0.01. Raises CompileError (unsupported op, untraceable
    model, a mask of the wrong shape) before anything is written.
    """
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        raise UsageError("example_input must be a batch of inputs, e.g. torch.randn(1, 3, 32, 32)")
    masks = {k: torch.as_tensor(v).to(torch.bool) for k, v in (masks or {}).items()}
    program = compile_model(model, tuple(example_input.shape[1:]), masks)
    if not masks:
        _check_computes(program, model, example_input)
    log_dropped_final(program)
    source = inspect.getsourcefile(type(model))
    provenance = {"source": "export", "class": f"{type(model).__module__}.{type(model).__qualname__}",
                  "torch_version": torch.__version__,
                  "source_sha256": sha256_file(Path(source)) if source and Path(source).is_file() else ""}
    return write_program_folder(program, folder, name=name, dataset=dataset, accuracy=accuracy, method=method,
                                provenance=provenance)


@torch.no_grad()
def _check_computes(program: Program, model: nn.Module, x: torch.Tensor) -> None:
    """The program must compute the model (an op the compiler mistranslated would be silent otherwise)."""
    unbinarized = [note.split(":")[0] for note in program.notes if "not binarized" in note]
    if unbinarized:
        raise CompileError(f"{type(model).__name__} has SNL alphas that are not binarized in {unbinarized}; "
                           "binarize them (alpha > 0.01 -> 1, else 0) and fine-tune as SNL does, then export")
    was_training = model.training
    model.eval()
    try:
        expected = model(x.float())
    finally:
        model.train(was_training)
    got = run_plain(program, x.float())
    final = dropped_final(program)
    if final:  # the model's output is after its final softmax; the program's before it
        got = getattr(torch, final)(got, dim=-1)
    err = float((got - expected).abs().max())
    if err > 1e-3 * max(1.0, float(expected.abs().max())):
        raise CompileError(f"the compiled program does not compute {type(model).__name__}: max |logit difference| "
                           f"{err:.3g} on example_input; please report the model")


def log_dropped_final(program: Program) -> None:
    """Tell the user when a final softmax was dropped (export and import both do it)."""
    note = final_note(program)
    if note:
        log.warning("%s", note)


def write_program_folder(program: Program, folder: str | Path, *, name: str | None, dataset: str,
                         accuracy: float | None, method: str, provenance: dict[str, Any]) -> ModelCard:
    """Write a compiled program (with weights) as a model folder; the card is written last."""
    if not program.has_weights:
        raise UsageError("write_program_folder needs the server's program (with weights)")
    folder = Path(folder)
    text, masks = program_to_json(program)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PROGRAM_FILE).write_text(text)
    save_file(masks, folder / MASKS_FILE)
    save_file(program_weights(program), folder / WEIGHTS_FILE)
    card = ModelCard(
        name=name or folder.name,
        arch=PROGRAM_ARCH,
        arch_args={"program_sha256": sha256_file(folder / PROGRAM_FILE)},
        dataset=dataset,
        input_shape=list(program.input_shape),
        num_classes=int(program.output_shape[0]),
        method=method,
        relus=program.relus,
        layers=[{"name": layer, "shape": list(shape), "relus": relus} for layer, shape, relus in program.relu_layers()],
        accuracy=accuracy,
        provenance=provenance,
        masks_sha256=sha256_file(folder / MASKS_FILE),
        weights_sha256=sha256_file(folder / WEIGHTS_FILE),
    )
    write_card(folder, card)
    return card


def load_program(folder: str | Path, card: ModelCard, *, weights: bool) -> Program:
    """The folder's program: public (program.json + masks) or, with `weights`, the server's.

    Without `weights` the weights file is never opened, so the client can call it.
    Each file's sha256 is checked against the card.
    """
    folder = Path(folder)
    program_path, masks_path = folder / PROGRAM_FILE, folder / MASKS_FILE
    _check(program_path, card.arch_args.get("program_sha256", ""), "program")
    _check(masks_path, card.masks_sha256, "masks")
    state = None
    if weights:
        _check(folder / WEIGHTS_FILE, card.weights_sha256, "weights")
        state = load_file(folder / WEIGHTS_FILE)
    try:
        return program_from_json(program_path.read_text(), load_file(masks_path), state)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{program_path}: {e}") from e


def _check(path: Path, expected: str, what: str) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} file is missing")
    if expected and sha256_file(path) != expected:
        raise CheckpointError(f"{path}: {what} do not match the sha256 recorded in {CARD_FILE}; "
                              "the file was changed or is corrupt")

