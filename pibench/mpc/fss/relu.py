"""The ReLU gate: additive shares of ReLU(x) in Z_2^64 from two openings and one one-bit DCF key.

Domain. The parties hold shares of x in Z_2^64 (fixed point, CrypTen's scale 2^16).
The sign is read in the k-bit domain x mod 2^k, exact when |x| < 2^(k-1) ring units,
i.e. |x| < 2^(k-17) in real value at scale 2^16 (k = 32: 32,768). A larger activation
flips its sign silently, so k is chosen per model from the range the launcher measures
in plaintext (`pibench.bench`, `bits_for`) and `out_of_range` names the values outside.

Construction (Boyle et al., EUROCRYPT 2021; the select of Orca, S&P 2024). The dealer
draws a mask r in Z_2^64 (the caller shares it; in the dealer protocol each party draws
its share from its key stream) and a bit rho. Write x^ = m^·2^(k-1) + y for the opened
x^ = x + r and r = m_r·2^(k-1) + r'; then MSB_k(x) = m^ XOR m_r XOR 1{y < r'}, so

    d = DReLU(x) = 1 XOR m^ XOR m_r XOR 1{y < r'}.

Round 1: each party sends its share of x + r (8 B each way). Each evaluates its DCF key on
k-1 bits (alpha = r', flip = m_r XOR rho) at y: XOR shares of 1{y < r'} XOR m_r XOR rho,
so d^ = d XOR rho is a local XOR of public bits with the key's output. Round 2: each sends
its bit of d^, packed 64 to a word (1/8 B each way). With d = d^ + rho - 2·d^·rho and the
dealt shares of rho and rho·r, everything after is linear in shares and public values:

    ReLU(x) = d·x = d^·x + (1 - 2·d^)·(rho·x^ - rho·r).

Key per ReLU and party: the DCF key plus shares of rho and rho·r (2 × 64 bits):

    key bits = lambda + (k - 8)·(lambda + 3) + 128 + 128,   lambda = 128  (k >= 8)

so 441 B at k = 32, 260.875 B at k = 21, 506.5 B at k = 36 (`ReluKey.size`, per ReLU for a multiple of 8).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pibench.mpc.fss import dcf, prg

U64 = np.uint64
DEFAULT_BITS = 32  # k when no calibration chose one (`pibench party` by hand): |x| < 32,768 at scale 2^16
MIN_BITS, MAX_BITS = dcf.LEAF_BITS + 1, 64


@dataclass
class ReluKey:
    """One party's keys for N ReLUs: its DCF key and its shares of rho and rho·r."""

    bits: int  # k: the comparison domain is x mod 2^k
    dcf: dcf.DcfKey
    rho: np.ndarray  # (N,) uint64: share of the bit that masks DReLU when it is opened
    rho_r: np.ndarray  # (N,) uint64: share of rho · r

    @property
    def count(self) -> int:
        return self.dcf.count

    @staticmethod
    def size(count: int, bits: int = DEFAULT_BITS) -> int:
        return 16 * count + dcf.DcfKey.size(count, bits - 1)

    @classmethod
    def words(cls, count: int, bits: int = DEFAULT_BITS) -> int:
        """Int64 words of a key as a tensor channel carries it (its bytes zero-padded to a multiple of 8)."""
        return -(-cls.size(count, bits) // 8)

    @property
    def nbytes(self) -> int:
        return self.size(self.count, self.bits)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview | np.ndarray, count: int, bits: int = DEFAULT_BITS) -> "ReluKey":
        """A key viewing `data` (no copy); a truncated or too long `data` raises ValueError naming sizes."""
        _check_bits(bits)
        data = memoryview(data).cast("B")
        if len(data) != cls.size(count, bits):
            raise ValueError(f"a ReLU key for {count} ReLUs at k = {bits} has {cls.size(count, bits)} bytes, got "
                             f"{len(data)}: the key was truncated or belongs to another layer")
        shares = np.frombuffer(data, dtype=U64, count=2 * count)
        key = dcf.DcfKey.from_bytes(data[16 * count:], count, bits - 1)
        return cls(bits, key, shares[:count], shares[count:])

    def to_words(self) -> np.ndarray:
        """The key as the int64 words the dealer sends (`keygen_words`), copied out of whatever it views."""
        words = np.zeros(self.words(self.count, self.bits), np.int64)
        raw = words.view(np.uint8)
        raw[:8 * self.count] = self.rho.view(np.uint8)
        raw[8 * self.count:16 * self.count] = self.rho_r.view(np.uint8)
        self.dcf.write(raw[16 * self.count:self.nbytes])
        return words

    @classmethod
    def from_words(cls, words: np.ndarray, count: int, bits: int = DEFAULT_BITS) -> "ReluKey":
        """The key in the int64 words `keygen_words` makes, viewed (no copy)."""
        if words.size != cls.words(count, bits):
            raise ValueError(f"a ReLU key for {count} ReLUs at k = {bits} has {cls.words(count, bits)} words, got "
                             f"{words.size}: the key was truncated or belongs to another layer")
        return cls.from_bytes(np.ascontiguousarray(words).view(np.uint8)[:cls.size(count, bits)], count, bits)


def _check_bits(bits: int) -> None:
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"the ReLU domain has {MIN_BITS}..{MAX_BITS} bits, got {bits}")


def keygen_words(r: np.ndarray, bits: int = DEFAULT_BITS, out: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The dealer's keys for ReLUs under the masks r (N,) in Z_2^64, made in their wire form (int64 words):
    what it sends, with no copy between making and sending. The caller shares r itself. `out`, an int64 array
    (2, `ReluKey.words`), is a buffer to make them in (every byte is overwritten), e.g. one reused from an
    earlier inference, so that no run pays for the pages of fresh memory. The keys are made block by block
    (`dcf.CHUNK` ReLUs): the only memory the size of the layer is the keys' own."""
    _check_bits(bits)
    r = np.asarray(r, dtype=U64).reshape(-1)
    count = r.size
    shape = (2, ReluKey.words(count, bits))
    if out is not None and (out.shape != shape or out.dtype != np.int64):
        raise ValueError(f"keys for {count} ReLUs at k = {bits} need an int64 buffer of shape {shape}, got "
                         f"{out.dtype} {out.shape}")
    words = np.empty(shape, np.int64) if out is None else out
    raw, size = words.view(np.uint8), ReluKey.size(count, bits)
    raw[:, size:] = 0  # the padding to whole words
    keys = (dcf.DcfKey.from_bytes(raw[0, 16 * count:size], count, bits - 1),
            dcf.DcfKey.from_bytes(raw[1, 16 * count:size], count, bits - 1))
    shares = words[:, :2 * count].view(U64).reshape(2, 2, count)  # per party: its shares of rho and rho·r
    # a stream of its own: a draw stays valid only until the stream's next, and the DCF draws its root seeds
    # from scratch.random between this block's draw and its last use
    scratch, stream = dcf.Scratch(), prg.RandomStream()
    for block in dcf.blocks(count, dcf.CHUNK):
        _keygen_block(r[block], bits, keys, shares[:, :, block], block.start, scratch, stream)
    return words[0], words[1]


def _keygen_block(r: np.ndarray, bits: int, keys: tuple[dcf.DcfKey, dcf.DcfKey], shares: np.ndarray, start: int,
                  scratch: dcf.Scratch, stream: prg.RandomStream) -> None:
    """The keys of the ReLUs start .. start + N under the masks r (N,): their DCF keys (alpha = r mod 2^(k-1),
    flip = m_r XOR rho) into `keys`, and both parties' shares of rho and rho·r into `shares` (2, 2, N)."""
    count = r.size
    randomness = stream.bytes(16 * count + -(-count // 8))  # party 0's two shares, then rho
    rho = np.unpackbits(randomness[16 * count:], count=count)
    words = scratch("relu words", (count,))
    np.right_shift(r, U64(bits - 1), out=words)
    flip = scratch("relu flip", (count,), np.uint8)
    np.bitwise_and(words, U64(1), out=flip, casting="unsafe")  # m_r
    flip ^= rho
    np.bitwise_and(r, U64((1 << (bits - 1)) - 1), out=words)  # alpha
    dcf.keygen_block(words, flip, bits - 1, keys, start, scratch)
    shares[0] = randomness[:16 * count].view(U64).reshape(2, count)
    words[:] = rho
    np.subtract(words, shares[0, 0], out=shares[1, 0])
    words *= r
    np.subtract(words, shares[0, 1], out=shares[1, 1])


def keygen(r: np.ndarray, bits: int = DEFAULT_BITS) -> tuple[ReluKey, ReluKey]:
    """The keys of `keygen_words`, parsed as each party parses what it receives."""
    count = np.asarray(r).size
    words0, words1 = keygen_words(r, bits)
    return ReluKey.from_words(words0, count, bits), ReluKey.from_words(words1, count, bits)


def masked_drelu(party: int, key: ReluKey, x_hat: np.ndarray) -> np.ndarray:
    """Round 1 -> 2: party `party`'s XOR share (N,) uint8 of d^ = DReLU(x) XOR rho, from the opened x^ (N,)."""
    x_hat = np.asarray(x_hat, dtype=U64)
    bits = key.bits
    share = dcf.evaluate(party, key.dcf, x_hat & U64((1 << (bits - 1)) - 1))
    if party == 0:
        share ^= 1 ^ ((x_hat >> U64(bits - 1)) & U64(1)).astype(np.uint8)
    return share


def finish(party: int, key: ReluKey, x_hat: np.ndarray, d_hat: np.ndarray, x_share: np.ndarray) -> np.ndarray:
    """Party `party`'s share of ReLU(x) from the opened x^, the opened d^ (N,) and its share of x; local."""
    d_hat = np.asarray(d_hat).astype(U64)
    out = key.rho * np.asarray(x_hat, dtype=U64) - key.rho_r
    out *= U64(1) - U64(2) * d_hat
    out += d_hat * np.asarray(x_share, dtype=U64)
    return out


def drelu(party: int, key: ReluKey, d_hat: np.ndarray) -> np.ndarray:
    """Party `party`'s additive share of DReLU(x) = d^ XOR rho in Z_2^64, from the opened d^; local."""
    d_hat = np.asarray(d_hat).astype(U64)
    return (d_hat if party == 0 else U64(0)) + (U64(1) - U64(2) * d_hat) * key.rho


def bits_for(largest: float, scale_bits: int = 16, headroom: float = 2.0) -> int:
    """The smallest k whose domain |x| < 2^(k-1) ring units holds `headroom` times the largest |input| (real
    value, at scale 2^scale_bits), at least `MIN_BITS`; may exceed `MAX_BITS` (then no k fits)."""
    ring = headroom * abs(largest) * 2.0 ** scale_bits
    return max(MIN_BITS, int(np.floor(np.log2(ring))) + 2 if ring >= 1 else MIN_BITS)


def out_of_range(x: np.ndarray, bits: int = DEFAULT_BITS) -> np.ndarray:
    """Which ring elements (int64/uint64, read as signed) lie outside the gate's domain |x| < 2^(bits-1)."""
    signed = np.asarray(x).astype(np.int64)
    bound = 1 << (bits - 1)
    return (signed < -bound) | (signed >= bound)
