"""The ReLU gate: additive shares of ReLU(x) in Z_2^64 from one opening of x + r and one DCF key.

Domain. The parties hold shares of x in Z_2^64 (fixed point, CrypTen's scale 2^16).
The sign is read in the k-bit domain x mod 2^k (k = 32 by default), which is exact
when |x| < 2^(k-1) ring units, i.e. |x| < 2^15 = 32768 in real value at scale 2^16.
A larger activation flips its sign silently; `out_of_range` finds them (tests check
the models against it).

Construction (Boyle et al., EUROCRYPT 2021, with the sign bit split as in their
fixed-point comparison). The dealer draws a mask r in Z_2^64 (the caller shares it;
in the dealer protocol each party draws its share from its key stream). Online each
party sends its share of x + r: the opened x^ = x + r is the only traffic, one ring
element each way (8 B sent + 8 B received per party per ReLU, one round per layer).
In the k-bit domain write x^ = m^·2^(k-1) + y and r = m_r·2^(k-1) + r'; then

    MSB_k(x) = m^ XOR m_r XOR c,   c = 1{y < r'}   (a borrow out of the low k-1 bits).

With t = m_r XOR c = m_r + c·(1 - 2·m_r), the dealer's DCF on k-1 bits at alpha = r'
with payload beta = (1 - 2·m_r, (1 - 2·m_r)·r) and dealt shares of m_r and m_r·r give
shares of t and t·r; everything after is linear in shared values and public x^:

    MSB = m^ + t·(1 - 2·m^),   d = DReLU(x) = 1 - MSB,
    ReLU(x) = d·x = d·x^ - d·r,   d·r = r - m^·r - (1 - 2·m^)·t·r.

No product, no second round. Key per ReLU and party: the DCF key (n = k-1 levels,
two payload words) plus shares of m_r and m_r·r:

    n·(lambda + 2 + 128) + lambda + 128 + 128 bits = 8,382 bits at k = 32,

so `ReluKey.size(1, 32)` = 1,048 bytes (1,032 + 16, control bits packed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from pibench.mpc.fss import dcf

U64 = np.uint64
DEFAULT_BITS = 32


@dataclass
class ReluKey:
    """One party's keys for N ReLUs: its DCF key and its shares of m_r and m_r·r."""

    bits: int  # k: the comparison domain is x mod 2^k
    dcf: dcf.DcfKey
    m_r: np.ndarray  # (N,) uint64: share of the mask's bit k-1
    m_r_r: np.ndarray  # (N,) uint64: share of m_r · r

    @property
    def count(self) -> int:
        return self.dcf.count

    @staticmethod
    def size(count: int, bits: int = DEFAULT_BITS) -> int:
        return dcf.DcfKey.size(count, bits - 1, 2) + 16 * count

    @classmethod
    def words(cls, count: int, bits: int = DEFAULT_BITS) -> int:
        """Length of `to_words()` for `count` ReLUs."""
        return -(-cls.size(count, bits) // 8)

    @property
    def nbytes(self) -> int:
        return self.size(self.count, self.bits)

    def to_bytes(self) -> bytes:
        return self.to_words().view(np.uint8)[:self.nbytes].tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | memoryview | np.ndarray, count: int, bits: int = DEFAULT_BITS) -> "ReluKey":
        """The inverse of `to_bytes` (no copy); a truncated or too long `data` raises ValueError naming sizes."""
        data = memoryview(data).cast("B")
        if len(data) != cls.size(count, bits):
            raise ValueError(f"a ReLU key for {count} ReLUs at k = {bits} has {cls.size(count, bits)} bytes, got "
                             f"{len(data)}: the key was truncated or belongs to another layer")
        shares = np.frombuffer(data, dtype=U64, count=2 * count)
        key = dcf.DcfKey.from_bytes(data[16 * count:], count, bits - 1, 2)
        return cls(bits, key, shares[:count], shares[count:])

    def to_words(self) -> np.ndarray:
        """The key as int64 words for a tensor channel (its bytes zero-padded to a multiple of 8)."""
        words = np.zeros(self.words(self.count, self.bits), dtype=np.int64)
        out = words.view(np.uint8)
        out[:8 * self.count] = self.m_r.astype(U64).view(np.uint8)
        out[8 * self.count:16 * self.count] = self.m_r_r.astype(U64).view(np.uint8)
        self.dcf.write(out[16 * self.count:self.nbytes])
        return words

    @classmethod
    def from_words(cls, words: np.ndarray, count: int, bits: int = DEFAULT_BITS) -> "ReluKey":
        """The inverse of `to_words`, a view of `words` (no copy)."""
        if words.size != cls.words(count, bits):
            raise ValueError(f"a ReLU key for {count} ReLUs at k = {bits} has {cls.words(count, bits)} words, got "
                             f"{words.size}: the key was truncated or belongs to another layer")
        return cls.from_bytes(np.ascontiguousarray(words).view(np.uint8)[:cls.size(count, bits)], count, bits)


def keygen_words(r: np.ndarray, bits: int = DEFAULT_BITS) -> tuple[np.ndarray, np.ndarray]:
    """The dealer's keys for ReLUs under the masks r (N,) in Z_2^64, made in their wire form (`to_words`):
    what it sends, with no copy between making and sending. The caller shares r itself."""
    if not 2 <= bits <= 64:
        raise ValueError(f"the ReLU domain has 2..64 bits, got {bits}")
    r = np.asarray(r, dtype=U64).reshape(-1)
    count = r.size
    low = U64((1 << (bits - 1)) - 1)
    m_r = (r >> U64(bits - 1)) & U64(1)
    sign = U64(1) - U64(2) * m_r  # 1 - 2·m_r in Z_2^64
    words = np.zeros((2, ReluKey.words(count, bits)), np.int64)
    dcf_bytes = words.view(np.uint8)[:, 16 * count:ReluKey.size(count, bits)]  # after the two shares
    dcf.keygen(r & low, np.stack([sign, sign * r], axis=1), bits - 1, out=(dcf_bytes[0], dcf_bytes[1]))
    shares = words[:, :2 * count].view(U64).reshape(2, 2, count)  # per party: its shares of m_r and m_r·r
    shares[0] = np.frombuffer(os.urandom(16 * count), dtype=U64).reshape(2, count)
    shares[1, 0] = m_r - shares[0, 0]
    shares[1, 1] = m_r * r - shares[0, 1]
    return words[0], words[1]


def keygen(r: np.ndarray, bits: int = DEFAULT_BITS) -> tuple[ReluKey, ReluKey]:
    """The keys of `keygen_words`, parsed as each party parses what it receives."""
    count = np.asarray(r).size
    words0, words1 = keygen_words(r, bits)
    return ReluKey.from_words(words0, count, bits), ReluKey.from_words(words1, count, bits)


def evaluate(party: int, key: ReluKey, x_hat: np.ndarray, r_share: np.ndarray) -> np.ndarray:
    """Party `party`'s share of ReLU(x) from the opened x^ = x + r (N,) and its share of r (N,); all local."""
    return _combine(party, key, np.asarray(x_hat, dtype=U64), np.asarray(r_share, dtype=U64), relu=True)


def drelu(party: int, key: ReluKey, x_hat: np.ndarray) -> np.ndarray:
    """Party `party`'s share of DReLU(x) = 1{x >= 0} (in the k-bit domain); local."""
    x_hat = np.asarray(x_hat, dtype=U64)
    return _combine(party, key, x_hat, np.zeros_like(x_hat), relu=False)


def _combine(party: int, key: ReluKey, x_hat: np.ndarray, r_share: np.ndarray, relu: bool) -> np.ndarray:
    bits = key.bits
    low = U64((1 << (bits - 1)) - 1)
    c = dcf.evaluate(party, key.dcf, x_hat & low)  # shares of c·(1-2m_r), c·(1-2m_r)·r
    t = key.m_r + c[:, 0]
    m_hat = (x_hat >> U64(bits - 1)) & U64(1)
    sign_hat = U64(1) - U64(2) * m_hat
    msb = sign_hat * t + (m_hat if party == 0 else U64(0))
    d = (U64(1) if party == 0 else U64(0)) - msb
    if not relu:
        return d
    t_r = key.m_r_r + c[:, 1]
    d_r = r_share - m_hat * r_share - sign_hat * t_r
    return d * x_hat - d_r


def out_of_range(x: np.ndarray, bits: int = DEFAULT_BITS) -> np.ndarray:
    """Which ring elements (int64/uint64, read as signed) lie outside the gate's domain |x| < 2^(bits-1)."""
    signed = np.asarray(x).astype(np.int64)
    bound = 1 << (bits - 1)
    return (signed < -bound) | (signed >= bound)
