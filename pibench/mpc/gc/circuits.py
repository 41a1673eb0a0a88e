"""The ReLU circuit of `crypten:gc`, written once over a garbling engine (`pibench.mpc.gc.garble`).

Inputs, bit-sliced LSB first, each wire an array over the layer's N ReLUs:

    s  (k, N)       the server's share x - r, its low k bits
    c  (k, N)       the client's share r, its low k bits
    m  (k - 1, N)   the low k - 1 bits of the client's m = -r' mod 2^64 (r' its output mask)
    p  (64 - k, N)  p_i = AND of m's bits k-1 .. i-1, for i = k .. 63: known to the client,
                    which evaluates, so ANDs with them need one ciphertext (`and_known`)

The server is to learn z = ReLU(x) - r' mod 2^64 and nothing else:

    x = s + c mod 2^k        ripple-carry, k - 1 ANDs (the carry out of bit k-1 is not needed)
    sign = bit k-1 of x      free; x is read as a signed k-bit number, exact for |x| < 2^(k-1)
    y = x[0:k-1] AND NOT sign  k - 1 ANDs: ReLU(x), k - 1 bits (bits k-1..63 are 0)
    z = y + m mod 2^64       bits 0..k-2: a full adder, k - 1 ANDs, with t the carry into bit k-1;
                             above, y is 0 and the carry ripples through m alone: z_i = m_i XOR
                             (t AND p_i), 64 - k ANDs with a known input, and z_(k-1) = m_(k-1) XOR t

The circuit outputs t AND p_i (and t) for the high bits; the client XORs m_i into those output
colors before returning them, so m's high bits never need a wire. `and_gates(k)` = 2k + 61 AND
gates per ReLU (125 at k = 32), `ciphertexts(k)` = 6(k - 1) + 64 - k (218: 3,488 bytes of
tables). The 64-bit subtraction in the circuit is what makes the re-masking exact: a k-bit result
lifted to Z_2^64 would be off by 2^k whenever y - r' wraps. Max pooling uses this circuit too
(max(a, b) = b + ReLU(a - b), `pibench.mpc.fss.maxpool`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

RING_BITS = 64


def and_gates(bits: int) -> int:
    """AND gates of one ReLU at comparison width `bits` (64 - bits of them with a known input)."""
    return 3 * (bits - 1) + RING_BITS - bits


def ciphertexts(bits: int) -> int:
    """16-byte ciphertexts of one ReLU's tables: two per AND gate, one per AND with a known input."""
    return 6 * (bits - 1) + RING_BITS - bits


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


def relu(e: Any, s: Any, c: Any, m: Any, p: Any) -> list[np.ndarray]:
    """The 64 output wires, LSB first: z's bits 0..k-2, then t AND p_i (t for bit k-1), whose colors the
    client XORs with m's bit i; k = len(s); wires as described above."""
    bits = len(s)
    if not 2 <= bits <= RING_BITS or len(c) != bits or len(m) != bits - 1 or len(p) != RING_BITS - bits:
        raise ValueError(f"the ReLU circuit takes k = 2..64 bits of each share, k - 1 bits of m and 64 - k known "
                         f"bits, got {len(s)}, {len(c)}, {len(m)}, {len(p)}")
    x, _ = _add(e, s, c)
    keep = e.not_(x[bits - 1])  # NOT sign
    y = [e.and_(x[i], keep) for i in range(bits - 1)]
    z, carry = _add(e, y, m)
    top = (e.and_(y[bits - 2], m[bits - 2]) if carry is None else
           e.xor(e.and_(e.xor(y[bits - 2], carry), e.xor(m[bits - 2], carry)), carry))
    return z + [top] + [e.and_known(top, p[i]) for i in range(RING_BITS - bits)]
