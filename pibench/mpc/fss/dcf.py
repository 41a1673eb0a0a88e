"""Distributed comparison function (DCF): additive shares of beta * 1{x < alpha}, from a dealer's key pair.

Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar, Rathee, "Function Secret Sharing for
Mixed-Mode and Fixed-Point Secure Computation" (EUROCRYPT 2021), Fig. 1. The dealer
knows alpha (an n-bit integer) and beta (a payload of `width` elements of Z_2^64) and
gives party b a key k_b; for any public x, evaluate(0, k_0, x) + evaluate(1, k_1, x)
= beta if x < alpha else 0 (mod 2^64), while either key alone is pseudorandom.

The key is a GGM tree walk: a root seed (the only part that differs between the
parties) and, per level, a correction word: seed CW (lambda = 128 bits), two control
bits and a value CW (the payload, 64·width bits); a final value CW closes the leaf:

    key bits = n·(lambda + 2 + 64·width) + lambda + 64·width

(n = 31, width = 2: 8,254 bits = 1,032 bytes, `DcfKey.nbytes`). Evaluation walks x's
bits from the top, two fixed-key AES blocks per level (`prg`); key generation four per
level and party. Both run level by level over a whole batch of keys at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pibench.mpc.fss import prg
from pibench.mpc.fss.prg import expand, random_seeds

LAMBDA = 128
U64 = np.uint64
# Tweaks of the PRG blocks: seed and value of the left child, of the right child, the leaf value.
_SEED, _VALUE, _LEAF = 0, 1, 4  # + 2 for the right child
CHUNK = 8_192  # keys per block in key generation: the working set of a level stays in cache
EVAL_CHUNK = 32_768  # keys per block in evaluation (half the blocks per key, a quarter of the work)


@dataclass
class DcfKey:
    """One party's keys for a batch of N comparisons on n-bit inputs with `width` payload words."""

    n_bits: int
    width: int
    seed: np.ndarray  # (N, 2) uint64: root seed, control bit 0 (party 0) or 1 (party 1)
    s_cw: np.ndarray  # (n, N, 2) uint64: seed correction words
    t_cw: np.ndarray  # (n, N, 2) uint8: control-bit correction words (left, right)
    v_cw: np.ndarray  # (n, N, width) uint64: value correction words
    final: np.ndarray  # (N, width) uint64: the leaf's correction word

    @property
    def count(self) -> int:
        return int(self.seed.shape[0])

    @staticmethod
    def size(count: int, n_bits: int, width: int) -> int:
        """Bytes of `count` keys as sent: the formula above, control bits packed 8 to a byte."""
        words = 2 + n_bits * (2 + width) + width
        return count * 8 * words + (2 * n_bits * count + 7) // 8

    @property
    def nbytes(self) -> int:
        return self.size(self.count, self.n_bits, self.width)

    def to_bytes(self) -> bytes:
        out = np.empty(self.nbytes, dtype=np.uint8)
        self.write(out)
        return out.tobytes()

    def write(self, out: np.ndarray) -> None:
        """The key's bytes into `out` (uint8, `nbytes` long): words, then the control bits packed."""
        start = 0
        for part in (self.seed, self.s_cw, self.v_cw, self.final):
            n = 8 * part.size
            out[start:start + n] = np.ascontiguousarray(part, dtype=U64).reshape(-1).view(np.uint8)
            start += n
        self.pack_control_bits(out)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview | np.ndarray, count: int, n_bits: int, width: int,
                   control_bits: np.ndarray | None = None) -> "DcfKey":
        """The inverse of `to_bytes`, its words views of `data`: a received key is parsed without a copy, and
        key generation writes straight into the buffer it will send (passing `control_bits`, an (n, N, 2)
        uint8 array it fills and packs with `pack_control_bits`, instead of unpacking them from `data`).
        A buffer of the wrong length raises ValueError (a truncated key)."""
        data = memoryview(data).cast("B")
        expected = cls.size(count, n_bits, width)
        if len(data) != expected:
            raise ValueError(f"a DCF key for {count} comparisons on {n_bits} bits has {expected} bytes, got "
                             f"{len(data)}: the key was truncated or belongs to another layer")
        words = np.frombuffer(data, dtype=U64, count=(expected - (2 * n_bits * count + 7) // 8) // 8)
        shapes = [(count, 2), (n_bits, count, 2), (n_bits, count, width), (count, width)]
        parts, start = [], 0
        for shape in shapes:
            n = int(np.prod(shape))
            parts.append(words[start:start + n].reshape(shape))
            start += n
        if control_bits is None:
            packed = np.frombuffer(data, dtype=np.uint8, offset=8 * start)
            control_bits = np.unpackbits(packed, count=2 * n_bits * count).reshape(n_bits, count, 2)
        seed, s_cw, v_cw, final = parts
        return cls(n_bits, width, seed, s_cw, control_bits, v_cw, final)

    def pack_control_bits(self, out: np.ndarray) -> None:
        """Write the control bits, packed, at the end of `out` (the key's buffer, `nbytes` long)."""
        out[self.nbytes - (self.t_cw.size + 7) // 8:] = np.packbits(self.t_cw.reshape(-1))


def _mask(bits: np.ndarray) -> np.ndarray:
    """0/1 (..., N) -> all-zero/all-one words (..., N, 2), to select (N, 2) words with & and ^. Built in the
    words' own shape: numpy broadcasting an (N, 1) mask along a last axis of length 2 costs about 8x."""
    out = np.empty(bits.shape + (2,), U64)
    np.subtract(U64(0), bits, out=out[..., 0])
    out[..., 1] = out[..., 0]
    return out


def _negate_if(bits: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(-1)^bit · value in Z_2^64 for values (N, width): value XOR mask, minus mask (two's complement)."""
    m = _mask(bits)[:, :values.shape[1]]
    return (values ^ m) - m


def _leaf(seeds: np.ndarray, width: int) -> np.ndarray:
    return expand(seeds, np.array([_LEAF], dtype=U64))[:, 0, :width]


def keygen(alpha: np.ndarray, beta: np.ndarray, n_bits: int,
           out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[DcfKey, DcfKey]:
    """Keys of f(x) = beta · 1{x < alpha} for N comparisons at once: alpha (N,) < 2^n, beta (N, width).

    With `out` (two uint8 buffers of `DcfKey.size` bytes) the keys are written there in their wire
    form, ready to send, and the returned keys view them.
    """
    alpha = np.asarray(alpha, dtype=U64)
    beta = np.ascontiguousarray(beta, dtype=U64)
    count, width = beta.shape
    if alpha.shape != (count,):
        raise ValueError(f"alpha has shape {alpha.shape}, beta {beta.shape}: one alpha per payload row")
    if not 1 <= width <= 2:
        raise ValueError(f"a DCF payload has 1 or 2 words (one PRG block), got {width}")
    if not 1 <= n_bits <= 64 or (n_bits < 64 and np.any(alpha >> U64(n_bits))):
        raise ValueError(f"alpha must fit in n_bits = {n_bits} (1..64)")
    if out is None:
        out = tuple(np.zeros((2, DcfKey.size(count, n_bits, width)), np.uint8))
    control_bits = np.empty((n_bits, count, 2), np.uint8)  # common to both keys
    keys = [DcfKey.from_bytes(buffer, count, n_bits, width, control_bits) for buffer in out]
    for start in range(0, count, CHUNK):  # a block of keys at a time stays in cache through all levels
        _keygen_block(alpha[start:start + CHUNK], beta[start:start + CHUNK], n_bits, keys, start)
    keys[0].pack_control_bits(out[0])
    roots = keys[0].seed.nbytes  # after the root seeds, both keys hold the same correction words
    out[1][roots:] = out[0][roots:]
    return keys[0], keys[1]


def _keygen_block(alpha: np.ndarray, beta: np.ndarray, n_bits: int, keys: list[DcfKey], start: int) -> None:
    count, width = beta.shape
    out = slice(start, start + count)
    seeds = random_seeds(2 * count).reshape(2, count, 2)  # party 0's roots, then party 1's
    seeds[:, :, 0] &= ~U64(1)
    keys[0].seed[out], keys[1].seed[out] = seeds[0], seeds[1]
    t = np.zeros((2, count), U64)
    t[1] = 1
    v_alpha = np.zeros((count, width), U64)
    # Both parties' children in one AES call: (party, tweak, N, 2) with tweaks seed L, seed R, value L, value R.
    blocks = np.empty((2, 4, count, 2), U64)
    aes = prg.Aes(blocks.shape)
    for i in range(n_bits):
        a = (alpha >> U64(n_bits - 1 - i)) & U64(1)  # 1: keep the right child, lose the left
        keep_right = _mask(a)
        for j, tweak in enumerate((_SEED, 2 + _SEED, _VALUE, 2 + _VALUE)):
            blocks[:, j] = seeds
            blocks[:, j, :, 1] ^= U64(tweak)
        g = aes.mmo(blocks)
        t_child = g[:, :2, :, 0] & U64(1)  # (2, 2, N): party, control bit L / R
        g[:, :2, :, 0] &= ~U64(1)
        # Only the parties' differences matter for the correction words (XOR-select: lose = keep ^ L ^ R).
        seed_l, seed_r = g[0, 0] ^ g[1, 0], g[0, 1] ^ g[1, 1]
        s_cw = seed_r ^ ((seed_l ^ seed_r) & keep_right)  # the lost child's seeds, made equal
        value_l = g[1, 2, :, :width] - g[0, 2, :, :width]
        value_r = g[1, 3, :, :width] - g[0, 3, :, :width]
        keep_right_value = keep_right[:, :width]
        lose = value_r ^ ((value_l ^ value_r) & keep_right_value)
        keep = value_l ^ value_r ^ lose
        # Losing the left branch (alpha_i = 1) means every x with x_i = 0 here is below alpha: pay beta.
        cw = lose - v_alpha + (beta & keep_right_value)
        keys[0].s_cw[i, out] = s_cw
        keys[0].v_cw[i, out] = _negate_if(t[1], cw)
        v_alpha += cw - keep
        t_lr = t_child[0] ^ t_child[1]  # (2, N): L, R
        t_lr[0] ^= a ^ U64(1)
        t_lr[1] ^= a
        keys[0].t_cw[i, out, 0] = t_lr[0]
        keys[0].t_cw[i, out, 1] = t_lr[1]
        t_keep = t_child[:, 0] ^ ((t_child[:, 0] ^ t_child[:, 1]) & a)
        t_cw_keep = t_lr[0] ^ ((t_lr[0] ^ t_lr[1]) & a)
        keep_seeds = g[:, 0] ^ ((g[:, 0] ^ g[:, 1]) & keep_right)
        seeds = keep_seeds ^ (s_cw & _mask(t))
        t = t_keep ^ (t & t_cw_keep)
    leaf = _leaf(seeds.reshape(-1, 2), width).reshape(2, count, width)
    keys[0].final[out] = _negate_if(t[1], leaf[1] - leaf[0] - v_alpha)


def evaluate(party: int, key: DcfKey, x: np.ndarray) -> np.ndarray:
    """Party `party`'s shares (N, width) of beta · 1{x < alpha} at the public inputs x (N,) < 2^n."""
    x = np.asarray(x, dtype=U64)
    if x.shape != (key.count,):
        raise ValueError(f"{x.shape[0] if x.ndim else 1} inputs for {key.count} DCF keys")
    if party not in (0, 1):
        raise ValueError(f"a DCF party is 0 or 1, got {party}")
    value = np.empty((key.count, key.width), U64)
    for start in range(0, key.count, EVAL_CHUNK):  # a block of keys at a time stays in cache through all levels
        block = slice(start, start + EVAL_CHUNK)
        value[block] = _evaluate_block(party, key, block, x[block])
    return value


def _evaluate_block(party: int, key: DcfKey, block: slice, x: np.ndarray) -> np.ndarray:
    """One block of keys through all levels, with preallocated buffers and contiguous (count, 2) operands.

    Written for numpy's speed, not brevity: an operand broadcast along a last axis of
    length 2 costs about 8x a contiguous one, and AES itself is only about a quarter of
    a level. Each level: the taken child's seed and value blocks, one AES call, then the
    corrections selected by the control bit t through an all-ones/all-zeros mask.
    """
    count, width, n = x.shape[0], key.width, key.n_bits
    blocks = np.empty((2, count, 2), U64)  # the taken child's seed block and value block, tweaked
    aes = prg.Aes(blocks.shape)
    value_tweak = np.zeros((count, 2), U64)
    value_tweak[:, 1] = _VALUE
    mask = np.empty((count, 2), U64)  # 0 - t in both words
    masked = np.empty((count, 2), U64)
    value = np.zeros((count, 2), U64)  # with a one-word payload, the second column is unused
    t = np.full(count, party, U64)
    t_cw = key.t_cw[:, block].view(np.uint16)[..., 0]  # (n, count): the (left, right) bytes as one word
    blocks[0] = key.seed[block]
    for i in range(n):
        bit = (x >> U64(n - 1 - i)) & U64(1)
        blocks[0, :, 1] ^= bit << U64(1)  # tweak 2·bit + _SEED
        np.bitwise_xor(blocks[0], value_tweak, out=blocks[1])
        g = aes.mmo(blocks)
        mask[:, 0] = U64(0) - t
        mask[:, 1] = mask[:, 0]
        t_taken = (t_cw[i] >> (bit.astype(np.uint16) << np.uint16(3))) & np.uint16(1)  # byte `bit` of the pair
        t = (g[0, :, 0] & U64(1)) ^ (t & t_taken)
        g[0, :, 0] &= ~U64(1)
        value += g[1]
        np.bitwise_and(key.v_cw[i, block], mask[:, :width], out=masked[:, :width])
        value += masked
        np.bitwise_and(key.s_cw[i, block], mask, out=masked)
        np.bitwise_xor(g[0], masked, out=blocks[0])  # the next level's seeds
    value = value[:, :width] + _leaf(blocks[0], width)
    value += key.final[block] & _mask(t)[:, :width]
    return U64(0) - value if party else value
