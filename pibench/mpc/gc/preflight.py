"""crypten:gc's checks before any party loads a model: its comparison domain holds the model's range, and one
inference's garbled circuits and labels fit this machine's memory (the protocol table's hooks; no CrypTen import).
"""

from __future__ import annotations

from typing import Any

import torch

from pibench.mpc.crypten.fss_memory import available_memory
from pibench.mpc.fss.domain import DomainError, HEADROOM, SCALE_BITS, layer_ranges
from pibench.mpc.fss import relu as fss_relu
from pibench.mpc.gc import relu as gc_relu
from pibench.mpc.program import Program


def model_bits(program: Program, x: torch.Tensor) -> int:
    """crypten:gc compares in k = 32 bits (`gc_relu.DEFAULT_BITS`): the k its costs are stated at. The model's
    plaintext range on the client's inputs must fit there with the headroom crypten:fss uses; otherwise the
    row fails naming the layer, its largest |input| and the bound (never wrong logits)."""
    bits = gc_relu.DEFAULT_BITS
    for layer, largest in layer_ranges(program, x).items():
        if fss_relu.bits_for(largest, SCALE_BITS, HEADROOM) > bits:
            bound = 2.0 ** (bits - 1 - SCALE_BITS) / HEADROOM
            raise DomainError(f"crypten:gc cannot compare the inputs of layer {layer}: its largest |input| is "
                              f"{largest:.4g}, above {bound:.4g}, what its k = {bits} bits hold at scale "
                              f"2^{SCALE_BITS} with {HEADROOM:g}x headroom; rescale the model or use crypten:fss "
                              "(which widens k) or crypten:dealer")
    return bits


def gc_memory_error(program: Program, batch: int, bits: Any = None) -> str:
    """Why one crypten:gc inference of `program` at `batch` cannot run with every party on this machine, or '':
    its garbled tables and labels (`gc_relu.memory_bytes`) must fit in the memory available."""
    available = available_memory()
    if available is None:
        return ""
    layers = [n * batch for _, _, n in program.relu_layers()]
    layers += [op.comparisons * batch for op in program.ops if op.kind == "maxpool"]  # an upper bound per level
    need = gc_relu.memory_bytes(layers)
    if need <= available:
        return ""
    relus = (program.relus + program.comparisons) * batch
    return (f"crypten:gc needs about {need / 1e9:.1f} GB for one inference at batch {batch}: {relus:,} garbled "
            f"ReLUs ({gc_relu.table_words(1) * 8:,} B of tables and {16 * gc_relu.client_input_count(gc_relu.DEFAULT_BITS):,}"
            f" B of labels each at the client), all on this machine, which has {available / 1e9:.1f} GB available; "
            "lower --batch, run the parties on separate machines (pibench party), or use crypten:dealer")
