"""A flat MPC program: what to compute, in execution order, independent of any MPC engine.

Each op reads earlier ops' outputs (`INPUT` is the program's input). How to compute it
securely is a backend's job (`pibench.mpc.backend`), so several engines run the same
program; `pibench.mpc.compiler` makes one from a PyTorch model and
`pibench.modelfolder.onnx_import` from an ONNX file, both through `pibench.mpc.builder`.

Weights are private: `Program.public()` strips them, which is what the client runs.
`program_to_json` / `program_from_json` write and read the public part as JSON (the
kept-ReLU positions and the weights travel as tensors, in safetensors files).
"""


from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.fx

from pibench.errors import PibenchError

INPUT = -1  # value id of the program input in `Op.inputs`
PROGRAM_FORMAT = "pibench-program/1"


class CompileError(PibenchError, ValueError):
    """The model uses an op the MPC compiler does not support (message names op and layer)."""


@dataclass
class Op:
    """One MPC operation; `inputs` are indices of earlier ops (INPUT for the program input).

    `attrs` are public (strides, kept-ReLU indices, ...); `weights` are private tensors,
    None in a public program. `shape` is the per-sample output shape.
    """

    kind: str  # conv, linear, affine, relu, add, concat, flatten, reshape, avgpool, maxpool
    layer: str  # source module name (or fx node name for functions)
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, torch.Tensor | None] = field(default_factory=dict)
    relus: int = 0  # kept ReLUs per sample (a clamp counts two per position)
    macs: int = 0  # multiply-accumulates per sample
    comparisons: int = 0  # secure comparisons per sample (max pooling)


@dataclass
class Program:
    """A compiled model: ops in order, the input shape, and what compilation folded away."""

    ops: list[Op]
    input_shape: tuple[int, ...]
    notes: list[str] = field(default_factory=list)  # e.g. "folded bn1 into conv1"

    @property
    def relus(self) -> int:
        return sum(op.relus for op in self.ops)

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops)

    @property
    def comparisons(self) -> int:
        return sum(op.comparisons for op in self.ops)

    @property
    def has_weights(self) -> bool:
        return all(w is not None for op in self.ops for w in op.weights.values())

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.ops[-1].shape

    def public(self) -> "Program":
        """The same program without weight values (shapes kept): what the client may hold."""
        ops = [replace(op, weights={k: None for k in op.weights}) for op in self.ops]
        return Program(ops, self.input_shape, list(self.notes))

    def fingerprint(self) -> str:
        """Digest of everything that fixes the protocol (not weight values); parties compare it."""
        h = hashlib.sha256(json.dumps(list(self.input_shape)).encode())
        for op in self.ops:
            public = {k: v for k, v in op.attrs.items() if not isinstance(v, torch.Tensor)}
            h.update(json.dumps([op.kind, list(op.inputs), list(op.shape), public], sort_keys=True).encode())
            for v in op.attrs.values():
                if isinstance(v, torch.Tensor):
                    h.update(v.numpy().tobytes())
        return h.hexdigest()

    def relu_layers(self) -> list[tuple[str, tuple[int, ...], int]]:
        """(layer, feature-map shape, kept ReLUs) of every relu op, in order: the per-layer accounting."""
        return [(op.layer, op.shape, op.relus) for op in self.ops if op.kind == "relu"]


# -- JSON (public part) and tensors ------------------------------------------------------------
def program_to_json(program: Program) -> tuple[str, dict[str, torch.Tensor]]:
    """The public program as JSON text, plus its kept-ReLU masks by layer (partial ReLUs only).

    A relu op with `"masked": true` reads its kept positions from the masks; the JSON
    holds no tensor and nothing that needs unpickling.
    """
    ops, masks = [], {}
    for op in program.ops:
        attrs = {k: v for k, v in op.attrs.items() if k != "index"}
        if "index" in op.attrs:
            if op.layer in masks:
                raise ValueError(f"two partial relu ops are named {op.layer!r}; layer names must be unique")
            mask = torch.zeros(math.prod(op.shape), dtype=torch.bool)
            mask[op.attrs["index"]] = True
            masks[op.layer] = mask.view(op.shape)
            attrs["masked"] = True
        ops.append({"kind": op.kind, "layer": op.layer, "inputs": list(op.inputs), "shape": list(op.shape),
                    "attrs": _jsonable(attrs), "weights": list(op.weights), "relus": op.relus, "macs": op.macs,
                    "comparisons": op.comparisons})
    doc = {"format": PROGRAM_FORMAT, "input_shape": list(program.input_shape), "notes": program.notes, "ops": ops}
    return json.dumps(doc, indent=1) + "\n", masks


def program_from_json(text: str, masks: dict[str, torch.Tensor],
                      weights: dict[str, torch.Tensor] | None = None) -> Program:
    """Inverse of `program_to_json`; `weights` (from `program_weights`) make a server program.

    Raises ValueError naming what does not fit (format, a missing mask, a weight's shape).
    """
    doc = json.loads(text)
    if not isinstance(doc, dict) or doc.get("format") != PROGRAM_FORMAT:
        raise ValueError(f'not a pibench program (expected "format": "{PROGRAM_FORMAT}")')
    ops = []
    for i, raw in enumerate(doc["ops"]):
        attrs = {k: _tuples(v) for k, v in raw["attrs"].items() if k != "masked"}
        shape = tuple(raw["shape"])
        if raw["attrs"].get("masked"):
            mask = masks.get(raw["layer"])
            if mask is None or tuple(mask.shape) != shape:
                found = "no mask" if mask is None else f"a mask of shape {tuple(mask.shape)}"
                raise ValueError(f"op {i} ({raw['layer']}) needs a kept-ReLU mask of shape {shape}, found {found}")
            attrs["index"] = mask.to(torch.bool).flatten().nonzero().flatten().to(torch.long)
            per_position = 2 if "clamp" in attrs else 1
            if per_position * len(attrs["index"]) != raw["relus"]:
                raise ValueError(f"op {i} ({raw['layer']}): its mask keeps {len(attrs['index'])} positions, "
                                 f"the program says {raw['relus']} ReLUs")
        op_weights: dict[str, torch.Tensor | None] = {}
        for name in raw["weights"]:
            value = None if weights is None else weights.get(f"{i}.{name}")
            expected = tuple(attrs["weight_shapes"][name])
            if weights is not None and (value is None or tuple(value.shape) != expected):
                found = "nothing" if value is None else f"shape {tuple(value.shape)}"
                raise ValueError(f"weight {i}.{name} ({raw['layer']}): expected shape {expected}, found {found}")
            op_weights[name] = value
        ops.append(Op(raw["kind"], raw["layer"], tuple(raw["inputs"]), shape, attrs, op_weights, raw["relus"],
                      raw["macs"], raw["comparisons"]))
    return Program(ops, tuple(doc["input_shape"]), list(doc["notes"]))


def program_weights(program: Program) -> dict[str, torch.Tensor]:
    """The private tensors of a program as "<op index>.<name>" -> tensor (for safetensors)."""
    return {f"{i}.{name}": value.detach().float().contiguous()
            for i, op in enumerate(program.ops) for name, value in op.weights.items()}


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _tuples(v: Any) -> Any:
    """JSON lists back to the tuples the compiler writes (weight shapes stay lists)."""
    if isinstance(v, dict):
        return {k: list(x) for k, x in v.items()}
    if isinstance(v, list):
        return tuple(_tuples(x) for x in v)
    return v


def pool_padding(size: int, kernel: int, stride: int, padding: int, out: int) -> tuple[int, int]:
    """(before, after) padding of one dimension that makes a floor-mode window cover `out` outputs.

    ceil_mode's extra windows are the same windows over input padded further at the end;
    the padding positions never win a max.
    """
    return padding, max(padding, (out - 1) * stride + kernel - size - padding)
