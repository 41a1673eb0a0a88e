"""crypten:fss: the dealer protocol with ReLU and max pooling by function secret sharing.

Everything but the non-linear layers is `crypten:dealer`'s (weights-fixed products,
recorded plan, offline/online split, key streams). A ReLU layer of N values is the
two-round gate of `pibench.mpc.fss.relu` on the k-bit domain x mod 2^k:

    offline  each party draws its share r_b of a fresh mask r from its key stream; the
             dealer (who draws the same streams) makes a DCF key pair for r and sends
             each party its own key: 441 bytes per ReLU and party at k = 32.
    online   round 1: each party sends its share of x + r (8 B) and receives the other's;
             both evaluate their keys locally; round 2: each sends its share of the masked
             DReLU bit, packed 64 to an int64 word. 16 B per ReLU per party, plus 16 B per
             64 ReLUs of a layer (sent + received).

Max pooling takes max(a, b) = b + ReLU(a - b) pairwise over each window
(`pibench.mpc.fss.maxpool`): 2·ceil(log2 window) rounds, window - 1 ReLUs per output.
Keys are never reused: the dealer draws fresh root seeds and masking bits for every key
and the masks come from the advancing key streams. k is the launcher's choice for the
model (`pibench.bench`: twice its largest comparison input, measured in plaintext), carried
in every ReLU request, so both parties' plans (compared by digest) and the dealer agree on it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pibench.mpc.crypten.compat import import_crypten
from pibench.mpc.crypten.backend import CryptenBackend
from pibench.mpc.fss import maxpool as max_tree
from pibench.mpc.fss import relu as relu_gate
from pibench.mpc.crypten.preprocessing import PreprocessedProvider
from pibench.mpc.program import Program

import_crypten()  # the compatibility shim before any crypten import, whichever module comes first
from crypten.mpc import MPCTensor  # noqa: E402
from crypten.mpc.primitives import ArithmeticSharedTensor, BinarySharedTensor  # noqa: E402


def _ring(share: torch.Tensor) -> np.ndarray:
    """An int64 share tensor as uint64 ring elements (flat, no copy when contiguous)."""
    return share.contiguous().reshape(-1).numpy().view(np.uint64)


class FssBackend(CryptenBackend):
    """`CryptenBackend` under a dealer, with ReLU and max pooling from FSS keys."""

    def __init__(self, program: Program, rank: int, provider: PreprocessedProvider,
                 bits: int = relu_gate.DEFAULT_BITS) -> None:
        if provider is None:
            raise ValueError("crypten:fss needs the dealer's provider")
        relu_gate.ReluKey.size(0, bits)  # a k outside 8..64 fails here, before any key is asked for
        super().__init__(program, rank, provider)
        self.bits = bits

    @classmethod
    def for_job(cls, program: Program, rank: int, provider: PreprocessedProvider,
                job: dict[str, Any]) -> "FssBackend":
        """k as the launcher chose it for this model (`pibench.mpc.fss.domain`); the default where the job names
        none (`pibench party` run by hand)."""
        return cls(program, rank, provider, job.get("fss_bits") or relu_gate.DEFAULT_BITS)

    def relu_shares(self, share: np.ndarray) -> np.ndarray:
        """One ReLU layer on this party's shares (flat uint64): open x + r, evaluate the key, open the masked
        DReLU bits (packed), finish locally. Two rounds."""
        r, key = self.provider.relu_key(share.size, self.bits)
        masked = torch.from_numpy((share + _ring(r)).view(np.int64))
        x_hat = _ring(ArithmeticSharedTensor.from_shares(masked, precision=0).reveal())
        bits = np.packbits(relu_gate.masked_drelu(self.rank, key, x_hat))
        words = np.zeros(-(-bits.size // 8), np.int64)
        words.view(np.uint8)[:bits.size] = bits
        opened = BinarySharedTensor.from_shares(torch.from_numpy(words)).reveal()
        d_hat = np.unpackbits(opened.numpy().view(np.uint8), count=share.size)
        return relu_gate.finish(self.rank, key, x_hat, d_hat, share)

    def relu(self, x: Any) -> Any:
        share = x._tensor.share
        y = self.relu_shares(_ring(share))
        return MPCTensor.from_shares(torch.from_numpy(y.view(np.int64)).reshape(share.shape))

    def maxpool(self, x: Any, attrs: dict[str, Any]) -> Any:
        share = x._tensor.share
        batch, channels, height, width = share.shape
        kernel, stride, padding = attrs["kernel"], attrs["stride"], attrs["padding"]
        out_h = (height + 2 * padding[0] - kernel[0]) // stride[0] + 1
        out_w = (width + 2 * padding[1] - kernel[1]) // stride[1] + 1
        index = max_tree.window_index(height, width, kernel, stride, padding)
        windows = _ring(share).reshape(batch * channels, height * width)[:, index]
        y = max_tree.max_tree(windows.reshape(-1, index.shape[1]), self.relu_shares)
        return MPCTensor.from_shares(torch.from_numpy(y.view(np.int64)).reshape(batch, channels, out_h, out_w))
