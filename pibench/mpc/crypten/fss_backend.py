"""crypten:fss: the dealer protocol with ReLU and max pooling by function secret sharing.

Everything but the non-linear layers is `crypten:dealer`'s (weights-fixed products,
recorded plan, offline/online split, key streams). A ReLU layer of N values is the
one-round gate of `pibench.mpc.fss.relu`:

    offline  each party draws its share r_b of a fresh mask r from its key stream; the
             dealer (who draws the same streams) makes a DCF key pair for r and sends
             each party its own key: 1,047.75 bytes per ReLU and party at k = 32.
    online   each party sends its share of x + r (8 B) and receives the other's (8 B):
             one round, 16 B per ReLU per party; both evaluate their keys locally.

Max pooling takes max(a, b) = b + ReLU(a - b) pairwise over each window
(`pibench.mpc.fss.maxpool`): ceil(log2 window) rounds, window - 1 ReLUs per output.
Keys are never reused: the dealer draws fresh root seeds for every key and the masks
come from the advancing key streams. The comparison reads x mod 2^32: activations must
stay below 2^15 in magnitude (see `pibench.mpc.fss.relu`).
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
from crypten.mpc.primitives import ArithmeticSharedTensor  # noqa: E402


def _ring(share: torch.Tensor) -> np.ndarray:
    """An int64 share tensor as uint64 ring elements (flat, no copy when contiguous)."""
    return share.contiguous().reshape(-1).numpy().view(np.uint64)


class FssBackend(CryptenBackend):
    """`CryptenBackend` under a dealer, with ReLU and max pooling from FSS keys."""

    def __init__(self, program: Program, rank: int, provider: PreprocessedProvider) -> None:
        if provider is None:
            raise ValueError("crypten:fss needs the dealer's provider")
        super().__init__(program, rank, provider)

    def relu_shares(self, share: np.ndarray) -> np.ndarray:
        """One ReLU layer on this party's shares (flat uint64): open x + r, evaluate the key. One round."""
        r, key = self.provider.relu_key(share.size)
        r_share = _ring(r)
        masked = torch.from_numpy((share + r_share).view(np.int64))
        x_hat = _ring(ArithmeticSharedTensor.from_shares(masked, precision=0).reveal())
        return relu_gate.evaluate(self.rank, key, x_hat, r_share)

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
