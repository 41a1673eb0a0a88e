"""Wire labels and the garbling hash: fixed-key AES-128, vectorized over a whole layer.

A label is a 128-bit block held as two uint64 words (numpy arrays of shape (..., 2));
bit 0 of word 0 is its point-and-permute (color) bit. Free-XOR needs one global
offset Delta per circuit with color bit 1, so the two labels of a wire differ in color.

The hash is the fixed-key construction of Guo, Katz, Wang and Yu (S&P 2020), the
form Bellare et al. introduced for garbling (S&P 2013) with a cheaper orthomorphism:

    H(x, t) = pi(sigma(x) XOR t) XOR sigma(x) XOR t,   sigma(xL || xR) = (xL XOR xR) || xL

with pi = AES-128 under a public fixed key (`pibench.mpc.fss.prg`) and t a tweak unique
per gate instance (public). sigma is linear, so sigma(x XOR Delta) = sigma(x) XOR sigma(Delta):
the garbler hashes both labels of a wire from one sigma. Bellare et al. use doubling in
GF(2^128) as sigma; any linear orthomorphism gives a tweakable circular correlation-
robust H (Guo et al., Theorem 2), and this one is one XOR on 64-bit words.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pibench.mpc.fss.prg import Aes

U64 = np.uint64
_ONE = U64(1)


def random_labels(shape: tuple[int, ...]) -> np.ndarray:
    """Uniform labels of `shape` (..., 2): AES-256-CTR under a fresh key from the OS's CSPRNG
    (os.urandom itself is far slower for megabytes of labels)."""
    count = int(np.prod(shape))
    out = np.empty(8 * count + 16, dtype=np.uint8)
    Cipher(algorithms.AES(os.urandom(32)), modes.CTR(bytes(16))).encryptor().update_into(
        np.zeros(8 * count, dtype=np.uint8), out)
    return out[:8 * count].view(U64).reshape(shape)


def random_delta() -> np.ndarray:
    """A fresh free-XOR offset (2,) with color bit 1."""
    delta = random_labels((2,))
    delta[0] |= _ONE
    return delta


def color(labels: np.ndarray) -> np.ndarray:
    """The point-and-permute bit of every label, as uint8 (shape without the last axis)."""
    return (labels[..., 0] & _ONE).astype(np.uint8)


def select(zero: np.ndarray, bits: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """zero XOR bit·Delta: the label of each bit value, from the zero labels (garbler side)."""
    return zero ^ (masks(np.asarray(bits)) & delta)


def masks(bits: np.ndarray) -> np.ndarray:
    """Blocks (..., 2) of all ones where the bit (...) is 1, else zero: `mask & block` is bit·block.
    Written word by word: numpy broadcasts a (..., 1) mask over 16-byte blocks slowly."""
    out = np.empty(bits.shape + (2,), dtype=U64)
    np.subtract(U64(0), bits, out=out[..., 0], dtype=U64)
    out[..., 1] = out[..., 0]
    return out


def color_masks(labels: np.ndarray) -> np.ndarray:
    """`masks` of the labels' colors."""
    return masks(labels[..., 0] & U64(1))


def sigma_into(x: np.ndarray, out: np.ndarray, tweak_index: np.ndarray, gate: int) -> None:
    """out = sigma(x) XOR (i, gate) for blocks x (n, 2) (word 1 high): the hash input before the AES."""
    np.bitwise_xor(x[:, 1], tweak_index, out=out[:, 0])
    np.bitwise_xor(x[:, 0], x[:, 1], out=out[:, 1])
    out[:, 1] ^= U64(gate)


def sigma(x: np.ndarray) -> np.ndarray:
    """sigma of blocks (..., 2): (xL XOR xR) || xL."""
    out = np.empty_like(x)
    out[..., 0] = x[..., 1]
    out[..., 1] = x[..., 0] ^ x[..., 1]
    return out


def hash_blocks(x: np.ndarray, tweak: np.ndarray) -> np.ndarray:
    """H(x, t) for blocks x (..., 2) and tweaks broadcastable to them; one AES call for the batch."""
    block = sigma(x)
    block ^= tweak
    out = Aes(block.shape)(block).copy()
    out ^= block
    return out
