"""Distributed comparison function (DCF) with one-bit output and early termination, from a dealer's key pair.

The dealer knows alpha (an n-bit integer) and a bit mu and gives party b a key k_b; for
any public x, evaluate(0, k_0, x) XOR evaluate(1, k_1, x) = 1{x < alpha} XOR mu, while
either key alone is pseudorandom (mu hides the comparison's result from the parties
when the gate opens it; see `relu`).

Construction: Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar, Rathee, "Function Secret
Sharing for Mixed-Mode and Fixed-Point Secure Computation" (EUROCRYPT 2021), Fig. 1, in
the group Z_2, with early termination (Boyle, Gilboa, Ishai, CCS 2016; Orca, S&P 2024):
the GGM tree walks only the top m = n - 7 bits of x; the leaf's 128-bit PRG output holds
one bit for each of the 2^7 values of the low 7 bits, and a 128-bit final correction word
turns it, on alpha's path, into the table 1{low < alpha's low bits}. Per tree level a key
holds a seed correction word (lambda = 128 bits), two control bits and one value bit:

    key bits = lambda (root) + m·(lambda + 3) + 2^7 (final),   m = n - 7

(n = 31: 3,400 bits = 425 bytes, `DcfKey.size(1, 31)`). The 126 bits of a seed, its
control bit and its value bit come from one fixed-key AES block (`prg`): evaluation costs
m + 1 blocks per comparison, key generation 2 per level and party plus one per party.
Both run level by level over blocks of keys (`blocks`), key generation writing straight into the
buffers it sends.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pibench.mpc.fss import prg
from pibench.mpc.fss.prg import random_seeds

LAMBDA = 128
LEAF_BITS = 7  # early termination: the last 7 levels are the 2^7 = 128 bits of one leaf block
U64 = np.uint64
_LOW2 = ~U64(3)  # a PRG block's word 0 carries the control bit (bit 0) and the value bit (bit 1)
_LEAF = U64(4)  # tweak of the leaf block (children use 0 and 1)
CHUNK = 16_384  # keys per block in key generation: the working set of a level stays in cache
EVAL_CHUNK = 32_768  # keys per block in evaluation


def levels(n_bits: int) -> int:
    """Tree levels of a DCF on n bits: all but the 7 packed into the leaf."""
    return n_bits - LEAF_BITS


@dataclass
class DcfKey:
    """One party's keys for a batch of N comparisons on n-bit inputs (n >= 7)."""

    n_bits: int
    seed: np.ndarray  # (N, 2) uint64: root seed (party 1's carries control bit 1 in bit 0)
    s_cw: np.ndarray  # (m, N, 2) uint64: seed correction words
    final: np.ndarray  # (N, 2) uint64: the leaf's correction word, 128 one-bit entries
    bits: np.ndarray  # (m, 3, ceil(N/8)) uint8: per level the bit planes t_L, t_R, v, packed

    @property
    def count(self) -> int:
        return int(self.seed.shape[0])

    @staticmethod
    def size(count: int, n_bits: int) -> int:
        """Bytes of `count` keys as sent: the formula above, each level's bits in three packed planes."""
        m = levels(n_bits)
        return 8 * count * (2 * m + 4) + 3 * m * (-(-count // 8))

    @property
    def nbytes(self) -> int:
        return self.size(self.count, self.n_bits)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview | np.ndarray, count: int, n_bits: int) -> "DcfKey":
        """Views of `data` (no copy): seeds, seed CWs, final CW (uint64 words), then the packed bit planes.
        Key generation writes into these views of the buffer it sends. A buffer of the wrong length raises
        ValueError (a truncated key)."""
        if not LEAF_BITS <= n_bits <= 64:
            raise ValueError(f"a DCF compares {LEAF_BITS}..64-bit inputs, got n_bits = {n_bits}")
        data = memoryview(data).cast("B")
        expected = cls.size(count, n_bits)
        if len(data) != expected:
            raise ValueError(f"a DCF key for {count} comparisons on {n_bits} bits has {expected} bytes, got "
                             f"{len(data)}: the key was truncated or belongs to another layer")
        m = levels(n_bits)
        words = np.frombuffer(data, dtype=U64, count=2 * count * (m + 2)).reshape(m + 2, count, 2)
        bits = np.frombuffer(data, dtype=np.uint8, offset=16 * count * (m + 2)).reshape(m, 3, -(-count // 8))
        return cls(n_bits, words[0], words[1:m + 1], words[m + 1], bits)


    def write(self, out: np.ndarray) -> None:
        """The key's bytes as sent into `out` (uint8, `nbytes` long): the inverse of `from_bytes`."""
        start = 0
        for part in (self.seed, self.s_cw, self.final, self.bits):
            raw = np.ascontiguousarray(part).reshape(-1).view(np.uint8)
            out[start:start + raw.size] = raw
            start += raw.size


def _mask(bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """0/1 (N,) -> all-zero/all-one words (N, 2) (into `out` if given), to select (N, 2) words with & and ^.
    Built in the words' own shape: numpy broadcasting an (N, 1) mask along a last axis of length 2 costs ~8x."""
    out = np.empty(bits.shape + (2,), U64) if out is None else out
    np.subtract(U64(0), bits, out=out[:, 0], dtype=U64)
    out[:, 1] = out[:, 0]
    return out


def _low_table(low: np.ndarray) -> np.ndarray:
    """Per a (N,) < 128: the 128-bit table whose bit q is 1{q < a}, as (N, 2) uint64 words."""
    out = np.empty(low.shape + (2,), U64)
    for word in range(2):
        ones = np.clip(low.astype(np.int64) - 64 * word, 0, 64).astype(U64)  # set bits in this word
        full = ones == 64
        out[..., word] = np.where(full, ~U64(0), (U64(1) << np.where(full, U64(0), ones)) - U64(1))
    return out


_LOW_TABLES = _low_table(np.arange(1 << LEAF_BITS))  # row a: the leaf table of alpha's low bits a


def _leaf_bit(leaf: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Bit `low` (N,) < 128 of each 128-bit block of leaf (N, 2), as uint64 0/1."""
    word = np.take_along_axis(leaf, (low >> U64(6)).astype(np.intp)[:, None], axis=1)[:, 0]
    return (word >> (low & U64(63))) & U64(1)


def blocks(count: int, chunk: int) -> Iterator[slice]:
    """Slices of about `chunk` keys covering `count` keys, each starting on a byte of the packed bit planes (a
    multiple of 8): a block's keys stay in cache through all levels."""
    step = max(8, chunk // 8 * 8)
    return (slice(start, min(start + step, count)) for start in range(0, count, step))


class Scratch:
    """The working memory of one key generation, reused by every block: named buffers, each block taking a prefix
    of what the first (the largest) made, and a `prg.RandomStream` for the root seeds. Allocated per block
    instead, a block's megabytes of temporaries went back to the OS at its end and came back as fresh pages in
    the next: ~47,000 page faults and 0.1-0.3 s of system time per key generation for resnet18's ReLUs here."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}
        self.random = prg.RandomStream()

    def __call__(self, name: str, shape: tuple[int, ...], dtype: type = U64) -> np.ndarray:
        """An array of `shape` (contents undefined) in the memory kept for `name`."""
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != dtype:
            buffer = self._buffers[name] = np.empty(size, dtype)
        return buffer[:size].reshape(shape)


def keygen(alpha: np.ndarray, n_bits: int, flip: np.ndarray | None = None,
           out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[DcfKey, DcfKey]:
    """Keys of f(x) = 1{x < alpha} XOR flip for N comparisons at once: alpha (N,) < 2^n, flip (N,) bits.

    With `out` (two uint8 buffers of `DcfKey.size` bytes) the keys are written there in their wire
    form, ready to send, and the returned keys view them.
    """
    alpha = np.asarray(alpha, dtype=U64)
    count = alpha.size
    flip = np.zeros(count, np.uint8) if flip is None else np.asarray(flip).astype(np.uint8)
    if alpha.shape != (count,) or flip.shape != (count,):
        raise ValueError(f"alpha has shape {alpha.shape}, flip {flip.shape}: one of each per comparison")
    if not LEAF_BITS <= n_bits <= 64 or (n_bits < 64 and np.any(alpha >> U64(n_bits))):
        raise ValueError(f"alpha must fit in n_bits = {n_bits} ({LEAF_BITS}..64)")
    if out is None:
        out = tuple(np.zeros((2, DcfKey.size(count, n_bits)), np.uint8))
    keys = (DcfKey.from_bytes(out[0], count, n_bits), DcfKey.from_bytes(out[1], count, n_bits))
    scratch = Scratch()
    for block in blocks(count, CHUNK):
        keygen_block(alpha[block], flip[block], n_bits, keys, block.start, scratch)
    return keys


def keygen_block(alpha: np.ndarray, flip: np.ndarray, n_bits: int, keys: tuple[DcfKey, DcfKey], start: int,
                 scratch: Scratch) -> None:
    """Both parties' keys for comparisons start .. start + N of `keys` (views of the buffers sent), level by level:
    alpha (N,) < 2^n, flip (N,) uint8, `start` a multiple of 8 (the block's bit planes are whole bytes). All but
    the root seeds is common to both keys: made in party 0's and copied to party 1's while in cache.

    Each node's children are expanded kept child first (tweak alpha_i), lost child second
    (tweak 1 - alpha_i), so no select is needed between them; bits live in uint8 arrays and
    the words in `scratch`'s buffers. On alpha's path exactly one party has t = 1.
    """
    count = alpha.size
    out, packed = slice(start, start + count), slice(start // 8, start // 8 + -(-count // 8))
    seeds = random_seeds(2 * count, scratch.random).reshape(2, count, 2)  # party 0's roots, then party 1's
    seeds[:, :, 0] &= _LOW2
    keys[0].seed[out] = seeds[0]
    keys[1].seed[out] = seeds[1]
    keys[1].seed[out, 0] |= U64(1)  # root control bits: party 0 has 0, party 1 has 1
    t = scratch("t", (2, count), np.uint8)
    t[0], t[1] = 0, 1
    acc = scratch("acc", (count,), np.uint8)  # XOR of both parties' value bits along alpha's path, offset by flip
    acc[:] = flip
    children = scratch("children", (2, 2, count, 2))  # (party, kept / lost child, N, 2)
    aes = prg.Aes(children.shape, scratch("aes", (children.nbytes + 16,), np.uint8))
    tweaks = scratch("tweaks", (2, count, 2))  # the kept child's tweak alpha_i, the lost child's 1 - alpha_i (word 1)
    tweaks[..., 0] = 0
    a8, low = scratch("a8", (count,), np.uint8), scratch("low", (2, 2, count), np.uint8)  # low: t (bit 0), v (bit 1)
    t_mask, planes = scratch("t_mask", (count, 2)), scratch("planes", (3, count), np.uint8)  # t_L, t_R, v_cw
    for i in range(levels(n_bits)):
        np.right_shift(alpha, U64(n_bits - 1 - i), out=tweaks[0, :, 1])
        tweaks[0, :, 1] &= U64(1)  # 1: keep the right child, lose the left
        np.bitwise_xor(tweaks[0, :, 1], U64(1), out=tweaks[1, :, 1])
        a8[:] = tweaks[0, :, 1]
        np.bitwise_xor(seeds[:, None], tweaks, out=children)
        g = aes.mmo(children)
        np.bitwise_and(g[..., 0], U64(3), out=low, casting="unsafe")
        g[..., 0] &= _LOW2
        s_cw = keys[0].s_cw[i, out]
        np.bitwise_xor(g[0, 1], g[1, 1], out=s_cw)  # the lost child's seeds, made equal
        keys[1].s_cw[i, out] = s_cw
        t_keep, t_lose = low[0, 0] ^ low[1, 0], low[0, 1] ^ low[1, 1]  # both parties' bits XORed
        # Losing the left child (alpha_i = 1) means every x below it is < alpha: its subtree outputs 1 ^ flip.
        np.bitwise_xor(a8 ^ acc, t_lose >> 1, out=planes[2])
        acc ^= (t_keep >> 1) ^ planes[2]
        t_keep &= 1
        t_keep ^= 1  # the kept child's control bits must differ, the lost child's agree
        t_lose &= 1
        swap = (t_keep ^ t_lose) & a8
        np.bitwise_xor(t_keep, swap, out=planes[0])
        np.bitwise_xor(t_lose, swap, out=planes[1])
        keys[0].bits[i, :, packed] = keys[1].bits[i, :, packed] = np.packbits(planes, axis=-1)
        _mask(t[0], t_mask)  # party 1's t is the complement of party 0's
        t_mask &= s_cw
        np.bitwise_xor(g[0, 0], t_mask, out=seeds[0])
        t_mask ^= s_cw
        np.bitwise_xor(g[1, 0], t_mask, out=seeds[1])
        t &= t_keep
        t ^= low[:, 0] & 1
    _final_block(alpha, seeds, acc, keys, out, scratch)


def _final_block(alpha: np.ndarray, seeds: np.ndarray, acc: np.ndarray, keys: tuple[DcfKey, DcfKey], out: slice,
                 scratch: Scratch) -> None:
    """The block's final correction words from the seeds (2, N, 2) reached on alpha's path: both leaves' blocks,
    the table of alpha's low bits and acc (N,), the value bits' XOR on the path."""
    seeds[..., 1] ^= _LEAF
    leaf = prg.Aes(seeds.shape, scratch("aes", (seeds.nbytes + 16,), np.uint8)).mmo(seeds)
    final = keys[0].final[out]
    np.bitwise_xor(leaf[0], leaf[1], out=final)
    low = scratch("alpha's low bits", (alpha.size,), np.uint8)
    np.bitwise_and(alpha, U64((1 << LEAF_BITS) - 1), out=low, casting="unsafe")
    final ^= np.take(_LOW_TABLES, low, axis=0, out=scratch("table", final.shape), mode="clip")
    final ^= _mask(acc, scratch("t_mask", final.shape))
    keys[1].final[out] = final


def evaluate(party: int, key: DcfKey, x: np.ndarray) -> np.ndarray:
    """Party `party`'s XOR share (N,) uint8 of 1{x < alpha} XOR flip at the public inputs x (N,) < 2^n."""
    x = np.asarray(x, dtype=U64)
    if x.shape != (key.count,):
        raise ValueError(f"{x.shape[0] if x.ndim else 1} inputs for {key.count} DCF keys")
    if party not in (0, 1):
        raise ValueError(f"a DCF party is 0 or 1, got {party}")
    share = np.empty(key.count, np.uint8)
    for block in blocks(key.count, EVAL_CHUNK):
        share[block] = _evaluate_block(key, block.start, x[block])
    return share


def _evaluate_block(key: DcfKey, start: int, x: np.ndarray) -> np.ndarray:
    """One block of keys through all levels: per level one AES block per key, then the corrections selected by
    the control bit t through an all-ones/all-zeros mask. `start` is a multiple of 8 (the bit planes' bytes).

    Written for numpy's speed, not brevity: bits live in uint8 arrays, words in preallocated (count, 2)
    buffers, and the taken children's low bits are XORed up in one byte per key, read once at the end.
    """
    count, n, m = x.shape[0], key.n_bits, levels(key.n_bits)
    block = slice(start, start + count)
    planes = key.bits[:, :, start // 8:-(-(start + count) // 8)]
    seeds = key.seed[block].copy()
    aes = prg.Aes(seeds.shape)
    t = (seeds[:, 0] & U64(1)).astype(np.uint8)
    seeds[:, 0] &= _LOW2
    low = np.empty(count, np.uint8)  # a taken child's control bit (bit 0) and value bit (bit 1)
    values = np.zeros(count, np.uint8)  # XOR of the taken children's low bits: bit 1 sums their value bits
    corrected = np.zeros(count, np.uint8)  # XOR of t · v_cw over the levels
    mask = np.empty((count, 2), U64)
    shifted = np.empty(count, U64)
    bit = np.empty(count, np.uint8)  # the child x takes at this level
    for i in range(m):
        np.right_shift(x, U64(n - 1 - i), out=shifted)
        np.bitwise_and(shifted, U64(1), out=bit, casting="unsafe")
        np.bitwise_xor(seeds[:, 1], bit, out=seeds[:, 1], casting="unsafe")  # the taken child's tweak
        g = aes.mmo(seeds)
        np.bitwise_and(g[:, 0], U64(3), out=low, casting="unsafe")
        g[:, 0] &= _LOW2
        values ^= low
        _mask(t, mask)
        level = np.unpackbits(planes[i], axis=-1, count=count)  # t_L, t_R, v_cw
        level[2] &= t
        corrected ^= level[2]
        t_cw = level[0]  # t_L ^ ((t_L ^ t_R) & bit), the taken child's, times the parent's t
        level[1] ^= t_cw
        level[1] &= bit
        t_cw ^= level[1]
        t_cw &= t
        np.bitwise_and(low, 1, out=t)
        t ^= t_cw
        np.bitwise_and(key.s_cw[i, block], mask, out=mask)
        np.bitwise_xor(g, mask, out=seeds)
    seeds[:, 1] ^= _LEAF
    leaf = aes.mmo(seeds)
    leaf ^= key.final[block] & _mask(t, mask)
    values >>= 1
    values ^= corrected
    values ^= _leaf_bit(leaf, x & U64((1 << LEAF_BITS) - 1)).astype(np.uint8)
    return values & 1
