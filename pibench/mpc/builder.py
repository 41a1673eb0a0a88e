"""Build a `Program` op by op: the one program builder both front ends use.

The torch.fx compiler (`pibench.mpc.compiler`) and the ONNX importer
(`pibench.modelfolder.onnx_import`) each walk their own graph and read their own
attributes; what a layer becomes and what it costs is decided here, once: a ReLU's mask
(dropped, full, or the kept positions), a clamp as two ReLUs per position, a conv's or
linear layer's multiply-accumulates, max pooling's comparisons, global average pooling
(with its flatten), and BatchNorm as a per-channel affine folded into the conv before it.
So a model exported either way compiles to the same program (same fingerprint, ReLUs and
bytes).

Values are named by the front end's own keys (an fx node, an ONNX value name); shapes
are per sample.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import torch

from pibench.errors import PibenchError
from pibench.mpc.program import INPUT, Op, Program
from pibench.mpc.rewrites import FINAL_NOTE


def batchnorm_affine(gamma: torch.Tensor, beta: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = x * scale + shift per channel."""
    scale = gamma / torch.sqrt(var + eps)
    return scale, beta - mean * scale


def fold_affine(weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor,
                shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv's weight and bias with a per-channel affine after it (a BatchNorm) folded in."""
    return weight * scale.view(-1, 1, 1, 1), bias * scale + shift


class ProgramBuilder:
    """Ops in execution order, the notes on what was folded or dropped, and the ReLU layers seen.

    `masks` ({ReLU layer name: boolean per-sample mask}) override a layer's own mask; errors
    about them are raised as `error`, the front end's own kind.
    """

    def __init__(self, masks: dict[str, torch.Tensor], error: type[PibenchError]) -> None:
        self.masks = dict(masks)
        self.error = error
        self.ops: list[Op] = []
        self.notes: list[str] = []
        self.value: dict[Hashable, int] = {}  # front-end value -> op index (or INPUT)
        self.relu_layers: list[str] = []

    def input(self, key: Hashable) -> None:
        self.value[key] = INPUT

    def alias(self, key: Hashable, source: Hashable) -> None:
        """`key` is the same value as `source` (identity, dropout, a folded BatchNorm, a no-op reshape)."""
        self.value[key] = self.value[source]

    def emit(self, key: Hashable, kind: str, layer: str, inputs: list[Hashable], shape: tuple[int, ...], *,
             weights: dict[str, torch.Tensor] | None = None, attrs: dict[str, Any] | None = None,
             **counts: int) -> None:
        """Append an op reading `inputs`; `counts` are its relus, macs or comparisons per sample."""
        weights = weights or {}
        attrs = dict(attrs or {})
        attrs["weight_shapes"] = {k: list(v.shape) for k, v in weights.items()}
        self.ops.append(Op(kind, layer, tuple(self.value[i] for i in inputs), tuple(shape), attrs, weights,
                           **counts))
        self.value[key] = len(self.ops) - 1

    def conv(self, key: Hashable, layer: str, x: Hashable, shape: tuple[int, ...], weight: torch.Tensor,
             bias: torch.Tensor, attrs: dict[str, Any]) -> None:
        """A 2-d conv (`attrs`: stride, padding, dilation, groups); weight (out, in / groups, kh, kw)."""
        self.emit(key, "conv", layer, [x], shape, weights={"weight": weight, "bias": bias}, attrs=attrs,
                  macs=math.prod(shape) * math.prod(weight.shape[1:]))

    def linear(self, key: Hashable, layer: str, x: Hashable, shape: tuple[int, ...], weight_t: torch.Tensor,
               bias: torch.Tensor) -> None:
        """x @ weight_t + bias, weight_t (in, out)."""
        self.emit(key, "linear", layer, [x], shape, weights={"weight_t": weight_t, "bias": bias},
                  macs=weight_t.shape[0] * weight_t.shape[1])

    def relu(self, key: Hashable, layer: str, x: Hashable, shape: tuple[int, ...],
             mask: torch.Tensor | None = None, clamp: tuple[float, float] | None = None) -> None:
        """A (masked) ReLU, or with `clamp` a hardtanh(lo, hi) = lo + relu(x - lo) - relu(x - hi): two ReLUs a
        position. A mask given for `layer` overrides `mask`; an all-false one drops the layer."""
        self.relu_layers.append(layer)
        mask = self.masks.get(layer, mask)
        if mask is not None and tuple(mask.shape) != tuple(shape):
            raise self.error(f"the mask for layer {layer!r} has shape {tuple(mask.shape)} but the layer's "
                             f"feature map is {tuple(shape)}")
        attrs: dict[str, Any] = {} if clamp is None else {"clamp": (float(clamp[0]), float(clamp[1]))}
        kept = math.prod(shape) if mask is None else int(mask.sum())
        if kept == 0:
            self.notes.append(f"dropped {layer} (mask all false)")
            self.alias(key, x)
            return
        if kept < math.prod(shape):
            attrs["index"] = mask.flatten().nonzero().flatten().to(torch.long).cpu()
        self.emit(key, "relu", layer, [x], shape, relus=(1 if clamp is None else 2) * kept, attrs=attrs)

    def maxpool(self, key: Hashable, layer: str, x: Hashable, shape: tuple[int, ...], kernel: tuple[int, int],
                stride: tuple[int, int], padding: tuple[int, int], ceil_mode: bool) -> None:
        """Max pooling: kernel size - 1 secure comparisons per output."""
        attrs: dict[str, Any] = {"kernel": kernel, "stride": stride, "padding": padding}
        if ceil_mode:  # only when set: programs compiled before ceil_mode keep their fingerprints
            attrs["ceil_mode"] = True
        self.emit(key, "maxpool", layer, [x], shape, attrs=attrs,
                  comparisons=math.prod(shape) * (kernel[0] * kernel[1] - 1))

    def avgpool(self, key: Hashable, layer: str, x: Hashable, shape: tuple[int, ...], kernel: tuple[int, int],
                stride: tuple[int, int], padding: tuple[int, int]) -> None:
        self.emit(key, "avgpool", layer, [x], shape, attrs={"kernel": kernel, "stride": stride, "padding": padding})

    def global_avg(self, key: Hashable, layer: str, x: Hashable, in_shape: tuple[int, ...], flatten: bool) -> None:
        """Average pooling over all of (H, W) of a (C, H, W) input, flattened to (C,) when `flatten`."""
        c, h, w = in_shape
        self.avgpool(key, layer, x, (c, 1, 1), (h, w), (h, w), (0, 0))
        if flatten:
            self.ops.append(Op("flatten", layer, (len(self.ops) - 1,), (c,), {"weight_shapes": {}}))
            self.value[key] = len(self.ops) - 1

    def reshape(self, key: Hashable, layer: str, x: Hashable, shape: tuple[int, ...],
                in_shape: tuple[int, ...]) -> None:
        """A reshape that keeps the batch dimension: none if the shape stays, else local in every backend."""
        if tuple(shape) == tuple(in_shape):
            self.alias(key, x)
        else:
            self.emit(key, "flatten" if len(shape) == 1 else "reshape", layer, [x], shape)

    def drop_final(self, key: Hashable, layer: str, x: Hashable, kind: str) -> None:
        """A softmax / log-softmax that is the model's output: dropped with a note (the argmax stays)."""
        self.alias(key, x)
        self.notes.append(FINAL_NOTE.format(kind=kind, layer=layer))

    def program(self, input_shape: tuple[int, ...], output: Hashable) -> Program:
        """The finished program; every given mask must have named a ReLU layer and `output` be the last op."""
        unused = sorted(set(self.masks) - set(self.relu_layers))
        if unused:
            raise self.error(f"masks given for {unused}, which are not ReLU layers of the model; "
                             f"its ReLU layers are {self.relu_layers}")
        if self.value.get(output) != len(self.ops) - 1:
            raise self.error("the model's output is not its last op; pibench programs end with the logits")
        return Program(self.ops, tuple(input_shape), self.notes)
