"""Backends: *how* a compiled `Program` is computed.

`run_program` walks the ops; a backend supplies the tensor operations. `TorchBackend`
computes in plaintext (checks the compiler against the model); secure backends live
in their own modules (`pibench.mpc.crypten.backend`) and override the operations
whose secure form differs: the products with weights (conv, matmul, scale) and pooling.

Ops whose semantics are the same on torch tensors and CrypTen MPCTensors (add, ReLU and
clamp, concat, reshapes, partial ReLU by gather/scatter, the bias additions) are written
once in `Backend`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Iterator

import torch
import torch.nn.functional as F

from pibench.mpc.program import INPUT, Op, Program

# Weights that broadcast over (B, C, ...) feature maps are stored as (1, C, 1, ...).
_CHANNEL_WEIGHTS = {("conv", "bias"), ("affine", "scale"), ("affine", "shift")}
# Weights that multiply the input (the rest are added to a product).
PRODUCT_WEIGHTS = {("conv", "weight"), ("linear", "weight_t"), ("affine", "scale")}

OpMeter = Callable[[int, Op], ContextManager[None]]


def _no_meter(index: int, op: Op) -> ContextManager[None]:
    return contextlib.nullcontext()


class Backend:
    """Operations on the backend's tensor type; subclasses add conv and pooling."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.weights: list[dict[str, Any]] = [{} for _ in program.ops]

    def weight_items(self) -> Iterator[tuple[int, Op, str, torch.Tensor | None, tuple[int, ...]]]:
        """(op index, op, name, value, shape) of every weight; channel vectors as (1, C, 1, ...)."""
        for i, op in enumerate(self.program.ops):
            for name, value in op.weights.items():
                shape = tuple(op.attrs["weight_shapes"][name])
                if (op.kind, name) in _CHANNEL_WEIGHTS:
                    shape = (1, shape[0]) + (1,) * (len(op.shape) - 1)
                    value = value.view(shape) if value is not None else None
                yield i, op, name, value, shape

    def load_weights(self, convert: Callable[[torch.Tensor | None, tuple[int, ...]], Any]) -> None:
        """Every weight through `convert(value, shape)`."""
        for i, _, name, value, shape in self.weight_items():
            self.weights[i][name] = convert(value, shape)

    def apply(self, index: int, op: Op, args: list[Any]) -> Any:
        w = self.weights[index]
        x = args[0]
        if op.kind == "add":
            return args[0] + args[1]
        if op.kind == "relu":
            bounds = op.attrs.get("clamp")
            fn = self.relu if bounds is None else (lambda v: self.clamp(v, *bounds))
            return fn(x) if "index" not in op.attrs else self.partial(x, op.attrs["index"], fn)
        if op.kind == "concat":
            return self.cat(args, op.attrs["dim"])
        if op.kind in ("flatten", "reshape"):
            return x.reshape(x.size(0), *op.shape)
        if op.kind == "linear":
            return self.matmul(x, w["weight_t"]) + w["bias"]
        if op.kind == "affine":
            return self.scale(x, w["scale"]) + w["shift"]
        if op.kind == "conv":
            return self.conv(x, w["weight"], op.attrs) + w["bias"]
        if op.kind == "avgpool":
            return self.avgpool(x, op.attrs)
        if op.kind == "maxpool":
            return self.maxpool(x, op.attrs)
        raise ValueError(f"backend {type(self).__name__} cannot run op kind {op.kind!r} (layer {op.layer})")

    def relu(self, x: Any) -> Any:
        return x.relu()

    @staticmethod
    def partial(x: Any, index: torch.Tensor, fn: Callable[[Any], Any]) -> Any:
        """`fn` (ReLU or clamp) of the kept positions only: gather, apply, add the change back (all local but fn)."""
        size = x.size()
        flat = x.reshape(size[0], -1)
        kept = flat.index_select(1, index)
        return flat.index_add(1, index, fn(kept) - kept).reshape(size)

    def clamp(self, x: Any, lo: float, hi: float) -> Any:
        """hardtanh(x, lo, hi) = lo + relu(x - lo) - relu(x - hi): both ReLUs in one secure comparison call."""
        both = self.relu(self.cat([x - lo, x - hi], 0))
        n = x.size(0)
        return both[:n] - both[n:] + lo

    def cat(self, xs: list[Any], dim: int) -> Any:
        raise NotImplementedError

    def matmul(self, x: Any, weight: Any) -> Any:
        return x.matmul(weight)

    def scale(self, x: Any, weight: Any) -> Any:
        return x * weight

    def conv(self, x: Any, weight: Any, attrs: dict[str, Any]) -> Any:
        raise NotImplementedError

    def avgpool(self, x: Any, attrs: dict[str, Any]) -> Any:
        raise NotImplementedError

    def maxpool(self, x: Any, attrs: dict[str, Any]) -> Any:
        raise NotImplementedError


def run_program(program: Program, backend: Backend, x: Any, meter: OpMeter = _no_meter) -> Any:
    """Run every op in order on `x`; values are freed after their last use."""
    last_use = {}
    for i, op in enumerate(program.ops):
        for j in op.inputs:
            last_use[j] = i
    values: dict[int, Any] = {INPUT: x}
    for i, op in enumerate(program.ops):
        with meter(i, op):
            values[i] = backend.apply(i, op, [values[j] for j in op.inputs])
        for j in set(op.inputs):
            if last_use[j] == i:
                del values[j]
    return values[len(program.ops) - 1]


class TorchBackend(Backend):
    """Plaintext execution of a program (needs weights): the compiler's reference."""

    def __init__(self, program: Program) -> None:
        if not program.has_weights:
            raise ValueError("TorchBackend needs a program with weights")
        super().__init__(program)
        self.load_weights(lambda value, shape: value)

    def cat(self, xs: list[torch.Tensor], dim: int) -> torch.Tensor:
        return torch.cat(xs, dim)

    def conv(self, x: torch.Tensor, weight: torch.Tensor, attrs: dict[str, Any]) -> torch.Tensor:
        return F.conv2d(x, weight, None, attrs["stride"], attrs["padding"], attrs["dilation"], attrs["groups"])

    def avgpool(self, x: torch.Tensor, attrs: dict[str, Any]) -> torch.Tensor:
        return F.avg_pool2d(x, attrs["kernel"], attrs["stride"], attrs["padding"])

    def maxpool(self, x: torch.Tensor, attrs: dict[str, Any]) -> torch.Tensor:
        return F.max_pool2d(x, attrs["kernel"], attrs["stride"], attrs["padding"],
                            ceil_mode=attrs.get("ceil_mode", False))


@torch.no_grad()
def run_plain(program: Program, x: torch.Tensor) -> torch.Tensor:
    return run_program(program, TorchBackend(program), x)


def decode_ring(ring: torch.Tensor, scale: int) -> torch.Tensor:
    """Fixed-point ring integers to floats, exactly.

    CrypTen 0.4.1's `FixedPointEncoder.decode` divides negatives by `scale - 1` and is
    off by one for some values (-2.99998617 decodes to -3.99998); plain division is exact.
    """
    return ring.double() / scale
