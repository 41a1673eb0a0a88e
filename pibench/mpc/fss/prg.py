"""A fixed-key AES-128 PRG in Matyas-Meyer-Oseas form, the length-doubling PRG of FSS trees.

G_i(s) = AES_k(s ^ i) ^ s ^ i for a public, fixed key k and a small tweak i, as in
LLAMA and Orca: one 128-bit output block per tweak, so a DCF level that needs a
seed and a value for one direction costs two AES blocks, not a keyed AES per seed.
Its security rests on AES as a (tweakable) correlation-robust function under a fixed
key. Seeds are 128-bit blocks held as pairs of uint64 (numpy rows); each call
encrypts the whole batch with one ECB `update`, no per-element Python loop.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# The fixed public key: any constant works; deriving it from a string says it is not a secret.
FIXED_KEY = hashlib.sha256(b"pibench fss fixed-key AES MMO").digest()[:16]
_CIPHER = Cipher(algorithms.AES(FIXED_KEY), modes.ECB())


class Aes:
    """AES_k of batches of 128-bit blocks of one shape, into an output buffer kept from call to call, so a
    loop over FSS tree levels allocates nothing. The output is overwritten by the next call. `raw`, a uint8
    buffer of at least 8·prod(shape) + 16 bytes, is one to use instead (e.g. one kept from block to block)."""

    def __init__(self, shape: tuple[int, ...], raw: np.ndarray | None = None) -> None:
        if shape[-1] != 2:
            raise ValueError(f"AES blocks are uint64 pairs, shape (..., 2), got {shape}")
        nbytes = 8 * math.prod(shape)
        raw = np.empty(nbytes + 16, dtype=np.uint8) if raw is None else raw  # update_into wants one spare block
        if raw.dtype != np.uint8 or raw.size < nbytes + 16:
            raise ValueError(f"AES of {shape} blocks needs a uint8 buffer of {nbytes + 16} bytes, got {raw.dtype} "
                             f"{raw.size}")
        self._raw = raw[:nbytes + 16]
        self.out = self._raw[:nbytes].view(np.uint64).reshape(shape)

    def __call__(self, blocks: np.ndarray) -> np.ndarray:
        """AES_k of every block; `blocks` is C-contiguous uint64 of this instance's shape."""
        if blocks.dtype != np.uint64 or not blocks.flags.c_contiguous or blocks.shape != self.out.shape:
            raise ValueError(f"AES blocks are a C-contiguous uint64 array of shape {self.out.shape}")
        _CIPHER.encryptor().update_into(blocks.reshape(-1).view(np.uint8), self._raw)
        return self.out

    def mmo(self, blocks: np.ndarray) -> np.ndarray:
        """AES_k(b) ^ b for blocks b that already carry their tweak (s ^ i): the MMO step of `expand`."""
        out = self(blocks)
        out ^= blocks
        return out


def aes(blocks: np.ndarray) -> np.ndarray:
    """AES_k of every 128-bit block; `blocks` is a C-contiguous uint64 array whose last axis has length 2."""
    return Aes(blocks.shape)(blocks)


def expand(seeds: np.ndarray, tweaks: np.ndarray) -> np.ndarray:
    """G_i(s) for every seed and tweak: seeds (N, 2), tweaks (T,) or per seed (N, T) -> (N, T, 2).

    The tweak is XORed into the high word of the block, away from the low bit that
    FSS trees use as the control bit. One AES call for all N·T blocks.
    """
    tweaks = np.asarray(tweaks, dtype=np.uint64)
    count, width = seeds.shape[0], tweaks.shape[-1]
    blocks = np.empty((count, width, 2), dtype=np.uint64)
    blocks[:, :, 0] = seeds[:, None, 0]
    np.bitwise_xor(seeds[:, None, 1], tweaks, out=blocks[:, :, 1])
    return mmo(blocks)


def mmo(blocks: np.ndarray) -> np.ndarray:
    """AES_k(b) ^ b for blocks b that already carry their tweak (s ^ i): the MMO step of `expand`."""
    return Aes(blocks.shape).mmo(blocks)


class RandomStream:
    """Fresh uniform bytes: AES-256-CTR under a key drawn from the OS's CSPRNG when the stream is made, a
    cryptographic PRG like os.urandom and about ten times faster for the megabytes a layer's keys need. A
    draw is valid until the next: draws reuse the stream's buffers, so a loop over blocks allocates nothing."""

    def __init__(self) -> None:
        self._encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(bytes(16))).encryptor()
        self._zeros = np.zeros(0, dtype=np.uint8)
        self._out = np.empty(16, dtype=np.uint8)

    def bytes(self, n: int) -> np.ndarray:
        """The next n bytes of the stream (uint8), in its buffer."""
        if self._zeros.size < n:
            self._zeros, self._out = np.zeros(n, dtype=np.uint8), np.empty(n + 16, dtype=np.uint8)  # + a spare block
        self._encryptor.update_into(self._zeros[:n], self._out)
        return self._out[:n]


def random_seeds(n: int, stream: RandomStream | None = None) -> np.ndarray:
    """n fresh uniform 128-bit seeds as (n, 2) uint64: from `stream` (valid until its next draw) or, without
    one, a `RandomStream` of their own."""
    return (stream or RandomStream()).bytes(16 * n).view(np.uint64).reshape(n, 2)
