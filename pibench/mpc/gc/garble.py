"""Free-XOR + half-gates garbling (Zahur, Rosulek, Evans, EUROCRYPT 2015), vectorized.

A circuit is a Python function over an *engine* with four gates, `xor`, `not_`, `and_`
and `and_known` (an AND whose second input the evaluator knows in the clear: its own
input bit, so only the evaluator half is needed, one ciphertext), each applied to whole arrays of wires at once (for a layer of N ReLUs a wire
is an (N, 2) label array, a group of wires (bits, N, 2)). The same function runs on:

    Garbler    wires are zero labels; XOR/NOT free (NOT adds Delta); AND emits two
               ciphertexts per gate instance (TG, TE) and returns the output zero label,
               `and_known` one (TE)
    Evaluator  wires are the labels the evaluator holds (a known wire: its label and bit);
               AND reads the two ciphertexts and does two hashes, `and_known` one and one
    Plain      wires are bits (uint8); the reference the other two are tested against

Gates are numbered in call order; the tweak of instance i of AND call g is (i, 2g) for
the garbler half and (i, 2g + 1) for the evaluator half, so no tweak repeats within a
circuit. A circuit must never be garbled twice under one Delta: a fresh Delta and
fresh input labels per garbling is the caller's contract (`pibench.mpc.gc.relu`).
"""

from __future__ import annotations

import numpy as np

from pibench.mpc.fss.prg import Aes
from pibench.mpc.gc.labels import U64, color_masks, masks, sigma, sigma_into

CIPHERTEXTS_PER_AND = 2
BYTES_PER_AND = 16 * CIPHERTEXTS_PER_AND


class _Hasher:
    """H of m label arrays of n blocks each, with the AES input/output buffers kept from gate to gate."""

    def __init__(self) -> None:
        self.shape: tuple[int, ...] = ()
        self._tiled: dict[tuple[bytes, int], np.ndarray] = {}

    def blocks(self, m: int, n: int) -> np.ndarray:
        """The (m, n, 2) input buffer, (re)allocated when n changes; fill it, then call `hash`."""
        if self.shape != (m, n, 2):
            self.shape = (m, n, 2)
            self.input = np.empty(self.shape, dtype=U64)
            self.aes = Aes(self.shape)
            self.index = np.arange(n, dtype=U64)
        return self.input

    def tile(self, block: np.ndarray) -> np.ndarray:
        """`block` (2,) repeated n times, contiguous (cached per block): XORs without broadcasting."""
        key = (block.tobytes(), self.shape[1])
        if key not in self._tiled:
            self._tiled[key] = np.tile(block, (self.shape[1], 1))
        return self._tiled[key]

    def hash(self) -> np.ndarray:
        out = self.aes(self.input)
        out ^= self.input
        return out


class Plain:
    """Cleartext bits: the reference semantics."""

    ands = 0

    def xor(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a ^ b

    def not_(self, a: np.ndarray) -> np.ndarray:
        return a ^ np.uint8(1)

    def and_(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        self.ands += int(np.prod(a.shape))
        return a & b

    def and_known(self, a: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.and_(a, v)


class Garbler:
    """Garbles as the circuit runs: wires are zero labels; `tables()` is what the evaluator needs."""

    def __init__(self, delta: np.ndarray, table_words: int) -> None:
        if not int(delta[0]) & 1:
            raise ValueError("free-XOR's Delta must have color bit 1 (labels.random_delta)")
        self.delta = delta
        self.sigma_delta = sigma(delta)
        self.gates = 0
        self.ands = 0
        self.table = np.empty(table_words, dtype=U64)  # the circuit's ciphertexts, known in advance
        self.words = 0
        self._hasher = _Hasher()

    def xor(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a ^ b

    def not_(self, a: np.ndarray) -> np.ndarray:
        return a ^ self.delta

    def and_(self, a0: np.ndarray, b0: np.ndarray) -> np.ndarray:
        """Half-gates: TG = H(A0) ^ H(A1) ^ pb·D, TE = H(B0) ^ H(B1) ^ A0; the output zero label
        WG0 ^ WE0 with WG0 = H(A_pa) ^ pa·pb·D and WE0 = H(B_pb) (pa, pb the zero labels' colors)."""
        shape = a0.shape
        n = int(np.prod(shape[:-1]))
        a0, b0 = a0.reshape(n, 2), b0.reshape(n, 2)
        table = self._table(4 * n).reshape(2, n, 2)
        x = self._hasher.blocks(4, n)
        sigma_delta = self._hasher.tile(self.sigma_delta)
        delta = self._hasher.tile(self.delta)
        sigma_into(a0, x[0], self._hasher.index, 2 * self.gates)
        np.bitwise_xor(x[0], sigma_delta, out=x[1])  # sigma is linear: the hash input of A1
        sigma_into(b0, x[2], self._hasher.index, 2 * self.gates + 1)
        np.bitwise_xor(x[2], sigma_delta, out=x[3])
        h = self._hasher.hash()
        tg, te = table[0], table[1]
        mb = color_masks(b0)
        np.bitwise_xor(h[0], h[1], out=tg)
        tg ^= mb & delta
        np.bitwise_xor(h[2], h[3], out=te)
        out = mb & te  # pb·(H(B0) ^ H(B1)): with H(B0), the evaluator half's zero label H(B_pb)
        te ^= a0
        out ^= h[2]
        out ^= h[0]
        out ^= color_masks(a0) & tg  # the garbler half's zero label H(A_pa) ^ pa·pb·D
        self.gates += 1
        self.ands += n
        return out.reshape(shape)

    def and_known(self, a0: np.ndarray, v0: np.ndarray) -> np.ndarray:
        """The evaluator half alone, for a v the evaluator knows: TE = H(V0) ^ H(V1) ^ A0, output zero label
        H(V0) (the evaluator gets H(V0) or H(V1) ^ TE ^ A = H(V0) ^ a·D)."""
        shape = a0.shape
        n = int(np.prod(shape[:-1]))
        a0, v0 = a0.reshape(n, 2), v0.reshape(n, 2)
        te = self._table(2 * n).reshape(n, 2)
        x = self._hasher.blocks(2, n)
        sigma_into(v0, x[0], self._hasher.index, 2 * self.gates + 1)
        np.bitwise_xor(x[0], self._hasher.tile(self.sigma_delta), out=x[1])
        h = self._hasher.hash()
        np.bitwise_xor(h[0], h[1], out=te)
        te ^= a0
        self.gates += 1
        self.ands += n
        return h[0].copy().reshape(shape)

    def _table(self, words: int) -> np.ndarray:
        if self.words + words > self.table.size:
            raise ValueError(f"the circuit has more than the {self.table.size} table words it was declared with")
        self.words += words
        return self.table[self.words - words:self.words]

    def tables(self) -> np.ndarray:
        """Every AND gate's ciphertexts, in gate order, as one flat uint64 array."""
        if self.words != self.table.size:
            raise ValueError(f"the circuit has {self.words} table words, declared {self.table.size}")
        return self.table


class Evaluator:
    """Evaluates with one label per wire and the garbler's tables (flat uint64, gate order)."""

    def __init__(self, tables: np.ndarray) -> None:
        self.table = np.asarray(tables, dtype=U64).reshape(-1)
        self.offset = 0
        self.gates = 0
        self._hasher = _Hasher()

    def xor(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a ^ b

    def not_(self, a: np.ndarray) -> np.ndarray:
        return a

    def _table(self, words: int) -> np.ndarray:
        end = self.offset + words
        if end > self.table.size:
            raise ValueError(f"the garbled tables end at word {self.table.size}, AND gate {self.gates} needs "
                             f"words up to {end}: the tables belong to another circuit or were truncated")
        self.offset = end
        return self.table[end - words:end]

    def and_(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """WG = H(A) ^ sa·TG, WE = H(B) ^ sb·(TE ^ A), output WG ^ WE (sa, sb the labels' colors)."""
        shape = a.shape
        n = int(np.prod(shape[:-1]))
        a, b = a.reshape(n, 2), b.reshape(n, 2)
        table = self._table(4 * n).reshape(2, n, 2)
        x = self._hasher.blocks(2, n)
        sigma_into(a, x[0], self._hasher.index, 2 * self.gates)
        sigma_into(b, x[1], self._hasher.index, 2 * self.gates + 1)
        h = self._hasher.hash()
        out = color_masks(a) & table[0]
        out ^= h[0]
        te = table[1] ^ a
        te &= color_masks(b)
        out ^= te
        out ^= h[1]
        self.gates += 1
        return out.reshape(shape)

    def and_known(self, a: np.ndarray, v: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """v = (its label V_v, its bit v): output H(V_v) ^ v·(TE ^ A)."""
        shape = a.shape
        n = int(np.prod(shape[:-1]))
        label, bit = v
        a = a.reshape(n, 2)
        te = self._table(2 * n).reshape(n, 2)
        x = self._hasher.blocks(1, n)
        sigma_into(label.reshape(n, 2), x[0], self._hasher.index, 2 * self.gates + 1)
        out = self._hasher.hash()[0].copy()
        out ^= masks(bit.reshape(n)) & (te ^ a)
        self.gates += 1
        return out.reshape(shape)

    def finish(self) -> None:
        """Every ciphertext must have been used: a longer table is another circuit's."""
        if self.offset != self.table.size:
            raise ValueError(f"the circuit used {self.offset} of {self.table.size} table words: the tables "
                             "belong to another circuit")
