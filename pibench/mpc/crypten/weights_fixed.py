"""Weights-fixed linear layers: the server's weights are masked once per model, not re-opened per inference.

A Beaver product of a shared input x and shared weights W opens both x - a and W - b
in every inference, so a layer costs as many bytes as it has weights. Client-server
protocols (Delphi, Cheetah) pay only for the activations. With a dealer:

    once per model   the dealer and the server draw a mask B (shape of W) from the
                     server's key stream; the server opens D = W - B to the client.
                     D reveals nothing: B is uniform and the client never sees it.
    per inference    the dealer deals shares of A (shape of x, fresh) and of
                     C = op(A, B), client share C0, server share C1.
    online           both open E = x - A (the only traffic: |x| ring elements each
                     way), then, since op is bilinear and D + B = W,

        op(x, W) = op(E + A, W) = op(E, W) + op(A, D) + op(A, B)

                     the server's share is op(E, W) + op(A1, D) + C1 and the
                     client's is op(A0, D) + C0, all local.

op is conv2d, matmul (linear) or mul (per-channel scale), on fixed-point ring
elements (int64 arithmetic wraps modulo 2^64, so every identity above holds
exactly). The product carries scale^2; like CrypTen between two parties, each
party then divides its own share by the scale (local truncation, off by at most
one unit in the last place with overwhelming probability).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pibench.mpc.crypten.compat import import_crypten
from pibench.mpc.crypten.preprocessing import PreprocessedProvider, ring_op
from pibench.mpc.protocols import SERVER

import_crypten()  # the compatibility shim before any crypten import, whichever module comes first
from crypten.mpc import MPCTensor  # noqa: E402
from crypten.mpc.primitives import ArithmeticSharedTensor  # noqa: E402


@dataclass
class FixedWeight:
    """One weight tensor under its once-per-model mask."""

    key: int  # index of its mask at the dealer
    d: torch.Tensor  # D = W - B in the ring, known to both parties
    w: torch.Tensor | None = None  # W in the ring (fixed point), the server's only


def local_share(op: str, kwargs: dict[str, Any], rank: int, e: torch.Tensor, a: torch.Tensor, c: torch.Tensor,
                weight: FixedWeight) -> torch.Tensor:
    """This party's share of op(x, W) at scale^2, from the opened E and its shares of A and C."""
    z = ring_op(op, a, weight.d, kwargs) + c
    if rank == SERVER:
        z += ring_op(op, e, weight.w, kwargs)
    return z


def truncate_share(z: torch.Tensor, scale: int) -> torch.Tensor:
    """Each party divides its own share (CrypTen's two-party truncation after a product)."""
    return z.div(scale, rounding_mode="trunc")


def weights_fixed_op(x: MPCTensor, weight: FixedWeight, op: str, kwargs: dict[str, Any],
                     provider: PreprocessedProvider, rank: int) -> MPCTensor:
    """op(x, W) on shares of x, opening only E = x - A; the result is truncated back to x's scale."""
    share = x._tensor.share
    a, c = provider.weights_fixed_pair(weight.key, tuple(share.shape), tuple(weight.d.shape), op, kwargs)
    e = ArithmeticSharedTensor.from_shares(share - a, precision=0).reveal()
    z = local_share(op, kwargs, rank, e, a, c, weight)
    return MPCTensor.from_shares(truncate_share(z, x._tensor.encoder.scale))
