"""The comparison domain k of crypten:fss for one model, chosen from its plaintext range.

The ReLU gate (`relu`) reads its input x mod 2^k: exact for |x| < 2^(k-1) ring units,
silently wrong beyond. Whoever holds the plaintext model and the client's inputs (the
launcher, `pibench.bench`) runs them in plaintext, records each ReLU and max-pool layer's
largest comparison input (a ReLU's |x|, clamp's |x - lo| and |x - hi|, a max-pool
window's max - min) and takes the smallest k holding HEADROOM times the largest at
CrypTen's scale 2^16. The headroom covers the fixed-point error of the secure run
against the plaintext one (a few ring units per layer) many times over. Where no k <= 64
fits, `DomainError` names the layer, its value and the bound: the model's row fails
instead of returning wrong logits.
"""

from __future__ import annotations

from typing import Any

import torch

from pibench.errors import UsageError
from pibench.mpc.backend import TorchBackend, run_program
from pibench.mpc.fss import relu as relu_gate
from pibench.mpc.program import Op, Program

HEADROOM = 2.0
SCALE_BITS = 16  # CrypTen's fixed-point precision


class DomainError(UsageError):
    """A model's comparison inputs do not fit any domain the gate supports (k <= 64)."""


class _RangeBackend(TorchBackend):
    """Plaintext run that records, per layer, the largest |input| of a ReLU or max-pool comparison."""

    def __init__(self, program: Program) -> None:
        super().__init__(program)
        self.largest: dict[str, float] = {}
        self._layer = ""

    def apply(self, index: int, op: Op, args: list[Any]) -> Any:
        self._layer = op.layer
        return super().apply(index, op, args)

    def _record(self, value: float) -> None:
        self.largest[self._layer] = max(self.largest.get(self._layer, 0.0), value)

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel():
            self._record(float(x.abs().max()))
        return super().relu(x)

    def maxpool(self, x: torch.Tensor, attrs: dict[str, Any]) -> torch.Tensor:
        high = super().maxpool(x, attrs)
        if x.numel():  # every comparison is a difference of two values of one window
            self._record(float((high + super().maxpool(-x, attrs)).max()))
        return high


@torch.no_grad()
def layer_ranges(program: Program, x: torch.Tensor, batch: int = 64) -> dict[str, float]:
    """Each ReLU / max-pool layer's largest comparison input (real value) over the inputs x, `batch` at a time."""
    backend = _RangeBackend(program)
    for start in range(0, len(x), batch):
        run_program(program, backend, x[start:start + batch])
    return backend.largest


def choose_bits(ranges: dict[str, float]) -> int:
    """The smallest k for every layer of `ranges` (`relu.bits_for`, HEADROOM x); DomainError if none <= 64."""
    if not ranges:
        return relu_gate.MIN_BITS
    layer, largest = max(ranges.items(), key=lambda item: item[1])
    bits = relu_gate.bits_for(largest, SCALE_BITS, HEADROOM)
    if bits > relu_gate.MAX_BITS:
        bound = 2.0 ** (relu_gate.MAX_BITS - 1 - SCALE_BITS) / HEADROOM
        raise DomainError(f"crypten:fss cannot compare the inputs of layer {layer}: its largest |input| is "
                          f"{largest:.4g}, above {bound:.4g}, what k = {relu_gate.MAX_BITS} bits hold at scale 2^"
                          f"{SCALE_BITS} with {HEADROOM:g}x headroom; rescale the model or use crypten:dealer")
    return bits


def model_bits(program: Program, x: torch.Tensor) -> int:
    """The k for `program` on the client's inputs x: `choose_bits` over `layer_ranges` (the protocol table's hook)."""
    return choose_bits(layer_ranges(program, x))
