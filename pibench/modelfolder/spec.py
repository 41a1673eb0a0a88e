"""A model spec -> what each process of a benchmark holds: programs, weights, inputs.

A spec is one of
- a registry name (`resnet18`): all ReLUs kept, seeded random weights, random inputs;
- a registry-architecture folder (`pibench train` / `linearize` / sweeps): the
  architecture from pibench's classes, masks and weights from the folder;
- a program folder (`pibench.export`, `pibench import`): the compiled program itself.

The server holds `server_model(spec)` (the program with weights); the client holds
`public_program(spec)`, built from the public files only (it never opens a weights
file, and needs no Python class of the user's); the evaluator recomputes the plaintext
logits with `ServerModel.logits` on the same `model_inputs`. Bench, the party
processes and sweeps all resolve specs here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pibench.data import get_dataset
from pibench.errors import UsageError
from pibench.modelfolder.export import PROGRAM_ARCH, load_program
from pibench.modelfolder.folder import (CheckpointError, ModelCard, is_model_folder, load_card, load_model, load_public,
                                        public_hash)
from pibench.models import create_model
from pibench.mpc.backend import run_plain
from pibench.mpc.compiler import compile_model
from pibench.mpc.parties.party import PartyModels
from pibench.mpc.program import Program

MODEL_SEED = 0  # registry names: the server's random weights (and the evaluator's copy)


@dataclass
class ServerModel:
    """The server's (and evaluator's) view of a spec: its card, its program with weights."""

    card: ModelCard | None
    program: Program
    module: nn.Module | None = None  # the torch model the program was compiled from (registry architectures)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Plaintext logits: the torch model where there is one (the stricter check), else the program."""
        return self.module(x) if self.module is not None else run_plain(self.program, x)


def _folder_card(spec: str) -> ModelCard | None:
    if is_model_folder(spec):
        return load_card(spec)
    if Path(spec).is_dir():
        raise CheckpointError(f"{spec}: folder has no model.json; it is not a pibench model folder")
    return None


def server_model(spec: str) -> ServerModel:
    """The server's model: a folder's weights, or seeded random weights for a registry name."""
    card = _folder_card(spec)
    if card is not None and card.arch == PROGRAM_ARCH:
        return ServerModel(card, load_program(spec, card, weights=True))
    if card is not None:
        card, module = load_model(spec)
    else:
        torch.manual_seed(MODEL_SEED)
        module = create_model(spec).eval()
    return ServerModel(card, compile_model(module), module)


def public_program(spec: str) -> tuple[ModelCard | None, Program]:
    """The client's program: from the public files only (never the weights file)."""
    card = _folder_card(spec)
    if card is not None and card.arch == PROGRAM_ARCH:
        return card, load_program(spec, card, weights=False)
    _, module = load_public(spec) if card is not None else (None, create_model(spec))
    return card, compile_model(module).public()


def model_identity(spec: str) -> str:
    """What fixes the protocol of a model spec, short and comparable across machines."""
    if is_model_folder(spec):
        return f"masks/arch hash {public_hash(spec)[:16]}"
    return f"registry model {spec}"


def model_inputs(card: Any, input_shape: tuple[int, ...], n: int, seed: int,
                 data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first n test inputs (and labels) of the card's dataset; seeded normal noise without one."""
    if card is not None and card.dataset not in ("", "random"):
        # digits / synthetic are generated at the model's input size; others have a fixed one
        kw: dict[str, Any] = {}
        if card.dataset in ("digits", "synthetic"):
            kw["size"] = input_shape[-1]
        if card.dataset == "synthetic":
            kw.update(shape=tuple(input_shape), num_classes=card.num_classes)
        dataset = get_dataset(card.dataset, "test", data_dir, **kw)
        if len(dataset) < n:
            raise UsageError(f"dataset {card.dataset!r} has {len(dataset)} test inputs, fewer than --samples {n}")
        items = [dataset[i] for i in range(n)]
        x = torch.stack([torch.as_tensor(item[0], dtype=torch.float32) for item in items])
        if tuple(x.shape[1:]) != tuple(input_shape):
            raise UsageError(f"dataset {card.dataset!r} gives inputs of shape {tuple(x.shape[1:])}, "
                             f"the model expects {tuple(input_shape)}")
        return x, torch.tensor([int(item[1]) for item in items])
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *input_shape, generator=g), None


def client_job(job: dict[str, Any]) -> tuple[Program, torch.Tensor, torch.Tensor | None]:
    """The client's view of a job: the public program and the job's inputs (and labels, with a dataset)."""
    card, program = public_program(job["model"])
    n = max(job["samples"], job["batch"])
    x, labels = model_inputs(card, program.input_shape, n, job["seed"], job.get("data_dir"))
    return program, x, labels


# How a party process resolves its jobs' specs (`pibench.mpc.parties.party.run_party(models=...)`).
PARTY_MODELS = PartyModels(server=lambda spec: server_model(spec).program, client=client_job, identity=model_identity)
