"""IKNP oblivious-transfer extension (Ishai, Kilian, Nissim, Petrank, CRYPTO 2003), correlated, in numpy.

Roles for garbling: the garbler (server) is the OT *sender*, the evaluator (client) the
*receiver*, with its input bits as choices. Setup, once per session: 128 base OTs the
other way round (`base_ot`): the receiver holds seed pairs (k_j^0, k_j^1), the sender a
random s in {0,1}^128 and k_j^(s_j). An extension of m OTs with choices r:

    receiver  T_j = G(k_j^0), U_j = T_j XOR G(k_j^1) XOR r       -> U (128 x m bits: 16 B per OT)
    sender    Q_j = G(k_j^(s_j)) XOR s_j·U_j, so row q_i = t_i XOR r_i·s
    sender    x0_i = H(q_i, i), and for a correlation Delta_i
              y_i = x0_i XOR H(q_i XOR s, i) XOR Delta_i           -> y (16 B per OT)
    receiver  H(t_i, i) XOR r_i·y_i = x0_i XOR r_i·Delta_i

so the sender's zero label is x0_i and the receiver holds the label of its bit
(correlated OT: the free-XOR label pair). G is AES-128-CTR under the seed, a fresh
counter block per extension; H is the garbling hash (`labels`) with tweak (i, 2^63 +
extension number), a domain the circuits' gate tweaks never reach.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pibench.mpc.gc import base_ot
from pibench.mpc.gc.labels import U64, hash_blocks, masks

KAPPA = 128
_OT_DOMAIN = 1 << 63


def _prg(seed: bytes, extension: int, nbytes: int) -> np.ndarray:
    """G(seed): `nbytes` pseudorandom bytes for one extension."""
    out = np.empty(nbytes + 16, dtype=np.uint8)
    nonce = extension.to_bytes(8, "little") + bytes(8)
    Cipher(algorithms.AES(seed), modes.CTR(nonce)).encryptor().update_into(np.zeros(nbytes, np.uint8), out)
    return out[:nbytes]


def _columns(seeds: list[bytes], extension: int, count: int) -> np.ndarray:
    """(128, count/8) bytes: G of every seed."""
    nbytes = count // 8
    return np.stack([_prg(seed, extension, nbytes) for seed in seeds])


_CHUNK_BYTES = 1 << 16  # byte columns per transpose step (524,288 OTs): bounds its buffers to 8 MiB
_BITS8 = ((7, 0x00AA00AA00AA00AA), (14, 0x0000CCCC0000CCCC), (28, 0x00000000F0F0F0F0))


def _swap(a: np.ndarray, b: np.ndarray, shift: int, mask: int, t: np.ndarray) -> None:
    """The delta swap of a transpose: bits of a at `mask << shift` trade places with bits of b at `mask`."""
    np.right_shift(a, U64(shift), out=t)
    t ^= b
    t &= U64(mask)
    b ^= t
    np.left_shift(t, U64(shift), out=t)
    a ^= t


def _transpose8(x: np.ndarray, t: np.ndarray) -> None:
    """Transpose the 8x8 bit matrix in every uint64 of x in place: (byte r, bit c) -> (byte c, bit r)
    (Hacker's Delight 7-3, as delta swaps within one word); t is scratch of x's shape."""
    for shift, mask in _BITS8:
        _swap(x, x, shift, mask, t)  # within one word: a and b are the same bits


def _transpose_bytes8(words: np.ndarray) -> None:
    """In place, along axis 1 (length 8): word j's byte r becomes word r's byte j (8x8 byte transposes)."""
    t = np.empty_like(words[:, 0])
    for distance, mask in ((4, 0x00000000FFFFFFFF), (2, 0x0000FFFF0000FFFF), (1, 0x00FF00FF00FF00FF)):
        for r in range(8):
            if not r & distance:
                _swap(words[:, r], words[:, r + distance], 8 * distance, mask, t)


def transpose(matrix: np.ndarray) -> np.ndarray:
    """The 128 x m bit matrix (128, m/8) uint8 as m rows of 128 bits: (m, 2) uint64 (bit j of row i = column j).

    In 8x8 bit blocks: the 8 bytes of rows 8g..8g+7 in byte column c become one word (byte transposes of
    the rows' words), its bits are transposed, and its byte b is byte g of row 8c + b (byte transposes
    again). Only whole words move between arrays, in chunks of columns."""
    nbytes = matrix.shape[1]
    rows = np.empty((nbytes * 8, 2), dtype=U64)
    groups = np.ascontiguousarray(matrix).view(U64).reshape(KAPPA // 8, 8, nbytes // 8)  # (g, r, w)
    step = _CHUNK_BYTES // 8
    for start in range(0, nbytes // 8, step):
        stop = min(nbytes // 8, start + step)
        words = groups[:, :, start:stop].copy()  # (g, r, w): word w of row 8g + r
        _transpose_bytes8(words)  # (g, j, w): byte r = row 8g + r, byte column 8w + j
        columns = np.ascontiguousarray(words.transpose(0, 2, 1)).reshape(KAPPA // 8, -1)  # (g, c)
        _transpose8(columns, np.empty_like(columns))  # byte b, bit r: row 8g + r, OT 8c + b
        halves = columns.reshape(2, 8, -1)  # (h, r, c) with g = 8h + r
        _transpose_bytes8(halves)  # (h, b, c): byte r = byte 8h + r of OT row 8c + b
        rows[64 * start:64 * stop] = halves.transpose(2, 1, 0).reshape(-1, 2)
    return rows


def padded(count: int) -> int:
    """OTs actually extended for `count`: a multiple of 128 (whole bytes and blocks)."""
    return -(-count // KAPPA) * KAPPA


def _tweaks(count: int, extension: int) -> np.ndarray:
    t = np.empty((count, 2), dtype=U64)
    t[:, 0] = np.arange(count, dtype=U64)
    t[:, 1] = U64(_OT_DOMAIN | extension)
    return t


class Receiver:
    """The evaluator's side: base-OT sender at setup, then choice bits in, labels out."""

    def __init__(self) -> None:
        self.base = base_ot.Sender()
        self.seeds: list[tuple[bytes, bytes]] = []
        self.extensions = 0

    def setup(self, answer: list[tuple[bytes, bytes]]) -> None:
        """Finish the base OTs with the sender's answer (`Sender.setup_answer`)."""
        self.seeds = self.base.keys(answer)

    def extend(self, choices: np.ndarray) -> tuple[np.ndarray, "_Pending"]:
        """The message U for these choice bits (m,) uint8, and the state that turns y into labels."""
        if len(self.seeds) != KAPPA:
            raise RuntimeError("IKNP needs its 128 base OTs first (setup)")
        count = padded(choices.size)
        r = np.zeros(count, dtype=np.uint8)
        r[:choices.size] = choices
        t = _columns([k0 for k0, _ in self.seeds], self.extensions, count)
        u = t ^ _columns([k1 for _, k1 in self.seeds], self.extensions, count)
        u ^= np.packbits(r, bitorder="little")[None, :]
        pending = _Pending(transpose(t), r, self.extensions, choices.size)
        self.extensions += 1
        return u, pending


class _Pending:
    def __init__(self, rows: np.ndarray, choices: np.ndarray, extension: int, count: int) -> None:
        self.rows, self.choices, self.extension, self.count = rows, choices, extension, count

    def labels(self, y: np.ndarray) -> np.ndarray:
        """The receiver's labels x0_i XOR r_i·Delta_i (count, 2) from the sender's corrections y (m, 2)."""
        out = hash_blocks(self.rows, _tweaks(self.rows.shape[0], self.extension))
        out ^= masks(self.choices) & y
        return out[:self.count]


class Sender:
    """The garbler's side: base-OT receiver at setup (random s), then zero labels and corrections out."""

    def __init__(self) -> None:
        self.s = np.frombuffer(os.urandom(KAPPA // 8), dtype=np.uint8)
        self.s_bits = np.unpackbits(self.s, bitorder="little")
        self.seeds: list[bytes] = []
        self.extensions = 0

    def setup_answer(self, message: bytes) -> list[tuple[bytes, bytes]]:
        """The base OTs as receiver with choices s: the answer for the receiver's `setup`."""
        self.seeds, answer = base_ot.receive(message, [int(b) for b in self.s_bits])
        return answer

    def extend(self, u: np.ndarray, count: int, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(zero labels x0 (count, 2), corrections y (m, 2)) for the receiver's U; `delta` (2,) or per OT (count, 2)."""
        if len(self.seeds) != KAPPA:
            raise RuntimeError("IKNP needs its 128 base OTs first (setup_answer)")
        m = padded(count)
        if u.shape != (KAPPA, m // 8):
            raise ValueError(f"an extension of {count} OTs takes a {KAPPA} x {m // 8} byte matrix, got {u.shape}")
        q = _columns(self.seeds, self.extensions, m)
        q ^= u & (np.uint8(0) - self.s_bits.astype(np.uint8))[:, None]
        rows = transpose(q)
        tweaks = _tweaks(m, self.extensions)
        x0 = hash_blocks(rows, tweaks)
        s = self.s.view(U64)
        y = hash_blocks(rows ^ s, tweaks)
        y ^= x0
        d = np.zeros((m, 2), dtype=U64)
        d[:count] = delta
        y ^= d
        self.extensions += 1
        return x0[:count], y
