"""The ReLU circuit of `crypten:gc`, written once over a garbling engine (`pibench.mpc.gc.garble`).

Inputs, bit-sliced LSB first, each wire an array over the layer's N ReLUs:

    s  (k, N)   the server's share x - r, its low k bits
    c  (k, N)   the client's share r, its low k bits
    m  (64, N)  the client's m = -r' mod 2^64, r' its mask for the output

Output (64, N): z = ReLU(x) - r' mod 2^64, what the server learns (and only that):

    x = s + c mod 2^k         ripple-carry, k - 1 ANDs (the carry out of bit k-1 is not needed)
    sign = bit k-1 of x       free; x is read as a signed k-bit number, exact for |x| < 2^(k-1)
    y = x[0:k-1] AND NOT sign k - 1 ANDs: ReLU(x), k - 1 bits (bits k-1..63 are 0)
    z = y + m mod 2^64        k - 1 ANDs for bits 0..k-2, then y's bits are 0 and the carry
                              only ripples through m: one AND per bit k-1..62 (64 - k)

so `and_gates(k)` = 3(k - 1) + 64 - k = 2k + 61 AND gates per ReLU: 125 at k = 32, i.e.
4,000 bytes of half-gates tables. The 64-bit subtraction in the circuit is what makes the
re-masking exact: a k-bit result lifted to Z_2^64 would be off by 2^k whenever y - r'
wraps. Max pooling uses this circuit too (max(a, b) = b + ReLU(a - b), `pibench.mpc.fss.maxpool`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

RING_BITS = 64


def and_gates(bits: int) -> int:
    """AND gates of one ReLU at comparison width `bits`."""
    return 3 * (bits - 1) + RING_BITS - bits


def _add(e: Any, a: Any, b: Any) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Ripple-carry a + b over len(a) bits, the carry out dropped: (sum bits, carry into the top bit or None)."""
    sums = [e.xor(a[0], b[0])]
    carry = None
    for i in range(1, len(a)):
        prev = a[i - 1], b[i - 1]
        carry = (e.and_(*prev) if carry is None else
                 e.xor(e.and_(e.xor(prev[0], carry), e.xor(prev[1], carry)), carry))
        sums.append(e.xor(e.xor(a[i], b[i]), carry))
    return sums, carry


def relu(e: Any, s: np.ndarray, c: np.ndarray, m: np.ndarray) -> list[np.ndarray]:
    """z = ReLU(s + c as a signed k-bit number) + m mod 2^64, k = len(s): its 64 output wires, LSB first."""
    bits = len(s)
    if not 2 <= bits <= RING_BITS or len(c) != bits or len(m) != RING_BITS:
        raise ValueError(f"the ReLU circuit takes k = 2..64 bits of each share and 64 mask bits, got "
                         f"{len(s)}, {len(c)}, {len(m)}")
    x, _ = _add(e, s, c)
    keep = e.not_(x[bits - 1])  # NOT sign
    y = [e.and_(x[i], keep) for i in range(bits - 1)]
    # z = y + m: full adder over y's k-1 bits, then the carry runs through m alone
    z, carry = _add(e, y, m[:bits - 1])
    top = (e.and_(y[bits - 2], m[bits - 2]) if carry is None else
           e.xor(e.and_(e.xor(y[bits - 2], carry), e.xor(m[bits - 2], carry)), carry))
    for i in range(bits - 1, RING_BITS):
        z.append(e.xor(m[i], top))
        if i < RING_BITS - 1:
            top = e.and_(m[i], top)
    return z
