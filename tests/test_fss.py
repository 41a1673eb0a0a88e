"""The FSS gates of pibench.mpc.fss, checked exactly in one process (both parties' keys side by side).

DCF and ReLU are exhaustive on small domains (k = 8, 9, 11: the early-terminated tree with
0, 1 and 3 levels above the packed leaf) against masks that hit the edge cases (alpha = 0,
the top bit of the mask set, x + r wrapping around 2^64), and random on the full 64-bit
ring at k = 21, 32 and 44 with the domain's edges. Key sizes are pinned as literal numbers
(docs/fss.md), not computed from the code under test.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pibench.mpc.fss import dcf, maxpool, prg, relu

U64 = np.uint64


@pytest.fixture
def rng() -> np.random.Generator:
    """Each test's own generator: its inputs do not depend on which tests ran before it."""
    return np.random.default_rng(17)


def ring(values) -> np.ndarray:
    """Signed integers as ring elements (uint64, two's complement)."""
    return np.asarray(values, dtype=np.int64).view(U64)


def split(value: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    share = rng.integers(0, 2**64, value.shape, dtype=U64)
    return share, value - share


def relu_two_party(x: np.ndarray, bits: int, rng: np.random.Generator,
                   r: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ReLU(x) and DReLU(x) as both parties compute them: open x + r, evaluate the keys, open d ^ rho, finish."""
    r = rng.integers(0, 2**64, x.shape, dtype=U64) if r is None else r
    (r0, r1), (x0, x1) = split(r, rng), split(x, rng)
    k0, k1 = relu.keygen(r, bits)
    x_hat = (x0 + r0) + (x1 + r1)  # round 1: each party sends its masked share
    d_hat = relu.masked_drelu(0, k0, x_hat) ^ relu.masked_drelu(1, k1, x_hat)  # round 2: one bit each
    y = relu.finish(0, k0, x_hat, d_hat, x0) + relu.finish(1, k1, x_hat, d_hat, x1)
    d = relu.drelu(0, k0, d_hat) + relu.drelu(1, k1, d_hat)
    return y, d


@pytest.mark.parametrize("n", [7, 8, 10])
@pytest.mark.parametrize("chunk", [dcf.CHUNK, 300])
def test_dcf_is_exact_on_every_input(n, chunk, monkeypatch, rng):
    """n = 7: the leaf block alone; 8 and 10: one and three tree levels above it."""
    monkeypatch.setattr(dcf, "CHUNK", chunk)  # 300: keys made and evaluated in blocks, the last one partial
    monkeypatch.setattr(dcf, "EVAL_CHUNK", chunk)
    x = np.arange(2**n, dtype=U64)
    for alpha in [0, 1, 2**(n - 1), 2**n - 1, 2**7, 2**7 - 1, *rng.integers(0, 2**n, 4)]:
        alpha = alpha % 2**n
        flip = rng.integers(0, 2, x.size).astype(U64)
        k0, k1 = dcf.keygen(np.full(x.size, alpha, U64), n, flip)
        shares = dcf.evaluate(0, k0, x), dcf.evaluate(1, k1, x)
        assert np.array_equal(shares[0] ^ shares[1], ((x < alpha) ^ (flip == 1)).astype(np.uint8)), alpha
        assert not np.array_equal(shares[0], shares[1])  # neither share is the answer itself


def test_dcf_on_64_bit_inputs(rng):
    alpha = np.array([0, 1, 2**63, 2**64 - 1, *rng.integers(0, 2**64, 60, dtype=U64)], dtype=U64)
    x = np.concatenate([alpha[:4], alpha[4:] + rng.integers(-3, 4, 60).astype(np.int64).view(U64)])
    k0, k1 = dcf.keygen(alpha, 64)
    y = dcf.evaluate(0, k0, x) ^ dcf.evaluate(1, k1, x)
    assert np.array_equal(y, (x < alpha).astype(np.uint8))


@pytest.mark.parametrize("bits", [8, 9, 11])
def test_relu_is_exact_on_every_input_under_edge_masks(bits, rng):
    x = ring(np.arange(-2**(bits - 1), 2**(bits - 1)))
    masks = [0, 2**(bits - 1), 2**(bits - 1) - 1, 2**64 - 1, 2**64 - 2**(bits - 1), 2**63,
             *rng.integers(0, 2**64, 4, dtype=U64)]
    for mask in masks:  # alpha = r mod 2^(k-1) = 0, top bit set or not, x + r wrapping round 2^64
        y, d = relu_two_party(x, bits, rng, np.full(x.size, mask, U64))
        assert np.array_equal(y.view(np.int64), np.maximum(x.view(np.int64), 0)), mask
        assert np.array_equal(d, (x.view(np.int64) >= 0).astype(U64)), mask


@pytest.mark.parametrize("bits", [21, 32, 44])
def test_relu_on_64_bit_ring_with_the_domain_edges(bits, rng):
    top = 2**(bits - 1)
    edges = [0, -1, 1, -top, top - 1, -top + 1, top - 2]
    values = np.concatenate([edges, rng.integers(-top, top, 5000), rng.integers(-2**16, 2**16, 1000)])
    x = ring(values)
    assert not relu.out_of_range(x, bits).any()
    y, d = relu_two_party(x, bits, rng)
    assert np.array_equal(y.view(np.int64), np.maximum(values, 0))
    assert np.array_equal(d, (values >= 0).astype(U64))


def test_out_of_range_activations_are_detected_not_trusted(rng):
    bits = 32
    outside = np.array([2**bits, -2**bits, 2**(bits - 1), -2**(bits - 1) - 1, 2**62, -2**63])
    assert relu.out_of_range(ring(outside), bits).all()
    assert not relu.out_of_range(ring([2**31 - 1, -2**31]), bits).any()
    # The gate reads x mod 2^k: 2^k looks like 0 and 2^(k-1) like a negative number.
    y, _ = relu_two_party(ring([2**bits + 5, 2**(bits - 1)]), bits, rng)
    assert not np.array_equal(y.view(np.int64), [2**bits + 5, 2**(bits - 1)])


# Bytes per ReLU and party (a multiple of 8 ReLUs), as docs/fss.md states them: 128 + (k - 8)·131 + 256 bits.
KEY_BYTES_PER_RELU = {8: 48, 19: 228.125, 20: 244.5, 21: 260.875, 22: 277.25, 24: 310, 32: 441, 35: 490.125, 44: 637.5,
                      64: 965}


@pytest.mark.parametrize("bits", sorted(KEY_BYTES_PER_RELU))
def test_key_bytes_sent_are_the_stated_numbers(bits, rng):
    """The bytes a party receives (the int64 words the dealer sends) for 1,000 ReLUs, and for 1 and 13."""
    words0, words1 = relu.keygen_words(rng.integers(0, 2**64, 1000, dtype=U64), bits)
    assert words0.nbytes == words1.nbytes == 8 * -(-1000 * KEY_BYTES_PER_RELU[bits] // 8)
    assert relu.ReluKey.size(1000, bits) == 1000 * KEY_BYTES_PER_RELU[bits]
    assert relu.ReluKey.from_words(words0, 1000, bits).nbytes == 1000 * KEY_BYTES_PER_RELU[bits]
    levels = bits - 8  # partial bytes: each level's three bit planes round up to whole bytes
    for count in (1, 13):
        assert relu.ReluKey.size(count, bits) == count * (KEY_BYTES_PER_RELU[bits] - 3 * levels / 8) + \
            3 * levels * -(-count // 8)


def test_key_bytes_at_k_32_meet_the_issue_bound():
    assert relu.ReluKey.size(8, 32) == 8 * 441 and 441 <= 450  # issue 27: <= 450 B per ReLU and party
    assert relu.ReluKey.size(8) == 8 * 441  # the default domain (`pibench party` by hand) is k = 32 ...
    assert not relu.out_of_range(ring([2**31 - 1, -2**31])).any()  # ... |x| < 2^31 ring units, 2^15 real
    assert relu.out_of_range(ring([2**31, -2**31 - 1])).all()
    assert dcf.DcfKey.size(8, 31) == 8 * 425  # 128 + 24 * 131 + 128 bits


def test_domain_is_chosen_with_headroom():
    """k holds twice the largest |input| at scale 2^16: 2 * |x| * 2^16 < 2^(k-1)."""
    assert relu.bits_for(0.0) == 8 and relu.bits_for(1e-6) == 8
    assert relu.bits_for(1.0) == 19  # 2^17 < 2^18
    assert relu.bits_for(0.99) == 18
    assert relu.bits_for(10.0) == 22  # 1.31e6 < 2^21
    assert relu.bits_for(1311 * 32768) == 44  # the digits CNN scaled x32,768: 5.6e12 < 2^43
    assert relu.bits_for(2**46) == 65  # no k <= 64 fits


def test_keys_round_trip_and_a_truncated_key_fails_loudly(rng):
    r = rng.integers(0, 2**64, 37, dtype=U64)
    x = ring(rng.integers(-1000, 1000, 37))
    w0, w1 = relu.keygen_words(r)
    r0, r1 = split(r, rng)
    x0, x1 = split(x, rng)
    back0 = relu.ReluKey.from_words(w0, 37)
    back1 = relu.ReluKey.from_bytes(w1.view(np.uint8)[:relu.ReluKey.size(37)].tobytes(), 37)
    x_hat = x + r
    d_hat = relu.masked_drelu(0, back0, x_hat) ^ relu.masked_drelu(1, back1, x_hat)
    y = relu.finish(0, back0, x_hat, d_hat, x0) + relu.finish(1, back1, x_hat, d_hat, x1)
    assert np.array_equal(y.view(np.int64), np.maximum(x.view(np.int64), 0))
    assert np.array_equal(back0.to_words(), w0) and np.array_equal(back1.to_words(), w1)
    raw = w0.view(np.uint8)[:relu.ReluKey.size(37)].tobytes()
    with pytest.raises(ValueError, match="truncated"):
        relu.ReluKey.from_bytes(raw[:-1], 37)
    with pytest.raises(ValueError, match="truncated"):
        relu.ReluKey.from_words(w0[:-1], 37)
    with pytest.raises(ValueError, match="truncated"):
        relu.ReluKey.from_bytes(raw, 38)  # the key of another layer
    with pytest.raises(ValueError, match="truncated"):
        relu.ReluKey.from_words(w0, 37, 31)  # a key made for another domain
    with pytest.raises(ValueError, match="inputs for 37"):
        relu.masked_drelu(0, back0, x_hat[:-1])
    with pytest.raises(ValueError, match="8..64 bits"):
        relu.keygen_words(r, 7)


def test_keys_made_in_a_used_buffer_are_the_same_keys(rng):
    """The dealer reuses key buffers: every byte, the padding too, is written again."""
    r = rng.integers(0, 2**64, 37, dtype=U64)
    x = ring(rng.integers(-1000, 1000, 37))
    dirty = np.full((2, relu.ReluKey.words(37, 24)), -1, np.int64)
    w0, w1 = relu.keygen_words(r, 24, dirty)
    assert w0.base is dirty or w0.base is dirty.base
    assert (w0.view(np.uint8)[relu.ReluKey.size(37, 24):] == 0).all()
    k0, k1 = relu.ReluKey.from_words(w0, 37, 24), relu.ReluKey.from_words(w1, 37, 24)
    x0, x1 = split(x, rng)
    d_hat = relu.masked_drelu(0, k0, x + r) ^ relu.masked_drelu(1, k1, x + r)
    y = relu.finish(0, k0, x + r, d_hat, x0) + relu.finish(1, k1, x + r, d_hat, x1)
    assert np.array_equal(y.view(np.int64), np.maximum(x.view(np.int64), 0))
    with pytest.raises(ValueError, match="int64 buffer of shape"):
        relu.keygen_words(r, 23, dirty)


def test_two_keygens_give_fresh_keys(rng):
    r = rng.integers(0, 2**64, 100, dtype=U64)
    (a0, a1), (b0, b1) = relu.keygen(r), relu.keygen(r)
    for first, second in [(a0, b0), (a1, b1)]:
        assert not np.array_equal(first.dcf.seed, second.dcf.seed)
        assert not np.array_equal(first.dcf.s_cw, second.dcf.s_cw)
        assert not np.array_equal(first.rho, second.rho)
    assert np.array_equal(a0.dcf.s_cw, a1.dcf.s_cw)  # correction words are common, roots differ
    assert np.array_equal(a0.dcf.final, a1.dcf.final) and np.array_equal(a0.dcf.bits, a1.dcf.bits)
    assert not np.array_equal(a0.dcf.seed, a1.dcf.seed)


def test_the_opened_bit_is_masked(rng):
    """d^ = DReLU(x) XOR rho: the same x under fresh keys opens to about half ones, whatever the sign."""
    x = ring(np.full(4000, 5))
    r = rng.integers(0, 2**64, x.size, dtype=U64)
    k0, k1 = relu.keygen(r, 16)
    d_hat = relu.masked_drelu(0, k0, x + r) ^ relu.masked_drelu(1, k1, x + r)
    assert 0.45 < d_hat.mean() < 0.55


def test_prg_is_fixed_key_mmo():
    seeds = prg.random_seeds(5)
    out = prg.expand(seeds, np.array([0, 3], dtype=U64))
    block = seeds.copy()
    block[:, 1] ^= U64(3)
    assert np.array_equal(out[:, 1], prg.aes(block) ^ block)
    assert np.array_equal(out[:, 0], prg.aes(seeds) ^ seeds)
    assert not np.array_equal(out[:, 0], out[:, 1])
    per_seed = prg.expand(seeds, np.array([[3]] * 5, dtype=U64))
    assert np.array_equal(per_seed[:, 0], out[:, 1])


@pytest.mark.parametrize("kernel,stride,padding", [((3, 3), (2, 2), (1, 1)), ((2, 2), (2, 2), (0, 0)),
                                                   ((3, 3), (1, 1), (0, 0))])
def test_max_pool_from_relu_gates_matches_torch(kernel, stride, padding, rng):
    x = rng.integers(-2**20, 2**20, (2, 3, 7, 7))
    index = maxpool.window_index(7, 7, kernel, stride, padding)
    windows = x.reshape(6, 49)[:, index].reshape(-1, index.shape[1])
    rounds = []

    def relu_layer(diff: np.ndarray) -> np.ndarray:
        rounds.append(diff.size)
        return relu_two_party(diff, 32, rng)[0]

    result = maxpool.max_tree(ring(windows), relu_layer).view(np.int64)
    expected = F.max_pool2d(torch.from_numpy(x).double(), kernel, stride, padding).long().numpy()
    assert np.array_equal(result.reshape(expected.shape), expected)
    # ReLUs per window in each round, stated, not derived from the code under test: a 3x3 window's 9 values
    # pair up as 4, then 2 (of the 5 left), 1 and 1; a 2x2 window's as 2, then 1. Always m - 1 ReLUs in all.
    levels = {9: [4, 2, 1, 1], 4: [2, 1]}[kernel[0] * kernel[1]]
    assert rounds == [level * windows.shape[0] for level in levels]
    assert maxpool.tree_levels(kernel[0] * kernel[1]) == levels
