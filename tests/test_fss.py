"""The FSS gates of pibench.mpc.fss, checked exactly in one process (both parties' keys side by side).

DCF and ReLU are exhaustive on a 10-bit domain against masks that hit the edge cases
(alpha = 0, the top bit of the mask set, x + r wrapping around 2^64), and random on
the full 64-bit ring at the default k = 32 with the domain's edges. Key sizes are
checked against the formula in the docstrings of `dcf` and `relu`.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pibench.mpc.fss import dcf, maxpool, prg, relu

U64 = np.uint64
rng = np.random.default_rng(17)


@pytest.fixture(autouse=True)
def seeded_rng():
    """Each test draws from a fresh generator, so its inputs do not depend on which tests ran before it."""
    global rng
    rng = np.random.default_rng(17)


def ring(values) -> np.ndarray:
    """Signed integers as ring elements (uint64, two's complement)."""
    return np.asarray(values, dtype=np.int64).view(U64)


def split(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    share = rng.integers(0, 2**64, value.shape, dtype=U64)
    return share, value - share


def relu_two_party(x: np.ndarray, bits: int, r: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ReLU(x) and DReLU(x) as both parties compute them: open x + r, evaluate the keys, add the shares."""
    r = rng.integers(0, 2**64, x.shape, dtype=U64) if r is None else r
    (r0, r1), (x0, x1) = split(r), split(x)
    k0, k1 = relu.keygen(r, bits)
    x_hat = (x0 + r0) + (x1 + r1)  # each party sends its masked share: the only traffic
    y = relu.evaluate(0, k0, x_hat, r0) + relu.evaluate(1, k1, x_hat, r1)
    d = relu.drelu(0, k0, x_hat) + relu.drelu(1, k1, x_hat)
    return y, d


@pytest.mark.parametrize("width,chunk", [(1, dcf.CHUNK), (2, dcf.CHUNK), (2, 300)])
def test_dcf_is_exact_on_every_10_bit_input(width, chunk, monkeypatch):
    monkeypatch.setattr(dcf, "CHUNK", chunk)  # 300: keys made and evaluated in blocks, the last one partial
    monkeypatch.setattr(dcf, "EVAL_CHUNK", chunk)
    n = 10
    x = np.arange(2**n, dtype=U64)
    for alpha in [0, 1, 2**(n - 1), 2**n - 1, *rng.integers(0, 2**n, 4)]:
        beta = rng.integers(0, 2**64, (1, width), dtype=U64).repeat(x.size, axis=0)
        k0, k1 = dcf.keygen(np.full(x.size, alpha, U64), beta, n)
        shares = dcf.evaluate(0, k0, x), dcf.evaluate(1, k1, x)
        assert np.array_equal(shares[0] + shares[1], np.where((x < alpha)[:, None], beta, U64(0))), alpha
        assert not np.array_equal(shares[0], shares[1])  # neither share is the answer itself


def test_dcf_on_64_bit_inputs():
    alpha = np.array([0, 1, 2**63, 2**64 - 1, *rng.integers(0, 2**64, 60, dtype=U64)], dtype=U64)
    x = np.concatenate([alpha[:4], alpha[4:] + rng.integers(-3, 4, 60).astype(np.int64).view(U64)])
    beta = rng.integers(0, 2**64, (alpha.size, 1), dtype=U64)
    k0, k1 = dcf.keygen(alpha, beta, 64)
    y = dcf.evaluate(0, k0, x) + dcf.evaluate(1, k1, x)
    assert np.array_equal(y, np.where((x < alpha)[:, None], beta, U64(0)))


def test_relu_is_exact_on_every_10_bit_input_under_edge_masks():
    bits = 10
    x = ring(np.arange(-2**(bits - 1), 2**(bits - 1)))
    masks = [0, 2**(bits - 1), 2**(bits - 1) - 1, 2**64 - 1, 2**64 - 2**(bits - 1), 2**63,
             *rng.integers(0, 2**64, 4, dtype=U64)]
    for mask in masks:  # alpha = r mod 2^(k-1) = 0, top bit set or not, x + r wrapping round 2^64
        y, d = relu_two_party(x, bits, np.full(x.size, mask, U64))
        assert np.array_equal(y.view(np.int64), np.maximum(x.view(np.int64), 0)), mask
        assert np.array_equal(d, (x.view(np.int64) >= 0).astype(U64)), mask


def test_relu_on_64_bit_ring_with_the_domain_edges():
    bits = relu.DEFAULT_BITS
    top = 2**(bits - 1)
    edges = [0, -1, 1, -top, top - 1, -top + 1, top - 2]
    values = np.concatenate([edges, rng.integers(-top, top, 5000), rng.integers(-2**16, 2**16, 1000)])
    x = ring(values)
    assert not relu.out_of_range(x, bits).any()
    y, d = relu_two_party(x, bits)
    assert np.array_equal(y.view(np.int64), np.maximum(values, 0))
    assert np.array_equal(d, (values >= 0).astype(U64))


def test_out_of_range_activations_are_detected_not_trusted():
    bits = relu.DEFAULT_BITS
    outside = np.array([2**bits, -2**bits, 2**(bits - 1), -2**(bits - 1) - 1, 2**62, -2**63])
    assert relu.out_of_range(ring(outside), bits).all()
    # The gate reads x mod 2^k: 2^k looks like 0 and 2^(k-1) like a negative number.
    y, _ = relu_two_party(ring([2**bits + 5, 2**(bits - 1)]), bits)
    assert not np.array_equal(y.view(np.int64), [2**bits + 5, 2**(bits - 1)])


def test_key_sizes_follow_the_papers_formula():
    lam = dcf.LAMBDA
    for count, n, width in [(8, 31, 2), (64, 10, 1), (3, 64, 2)]:
        k0, k1 = dcf.keygen(np.zeros(count, U64), np.ones((count, width), U64), n)
        bits = n * (lam + 2 + 64 * width) + lam + 64 * width  # per key, Boyle et al. 2021
        assert k0.nbytes == k1.nbytes == len(k0.to_bytes()) == count * (bits - 2 * n) // 8 + (2 * n * count + 7) // 8
        if count % 4 == 0:
            assert k0.nbytes * 8 == count * bits
    key, _ = relu.keygen(rng.integers(0, 2**64, 1000, dtype=U64), 32)
    per_relu = (31 * (128 + 2 + 128) + 128 + 128 + 128) / 8  # 1,047.75 B: DCF key + shares of m_r, m_r·r
    assert key.nbytes == len(key.to_bytes()) == 1000 * per_relu


def test_keys_round_trip_and_a_truncated_key_fails_loudly():
    r = rng.integers(0, 2**64, 37, dtype=U64)
    x = ring(rng.integers(-1000, 1000, 37))
    k0, k1 = relu.keygen(r)
    r0, r1 = split(r)
    back0 = relu.ReluKey.from_words(k0.to_words(), 37)
    back1 = relu.ReluKey.from_bytes(k1.to_bytes(), 37)
    x_hat = x + r
    y = relu.evaluate(0, back0, x_hat, r0) + relu.evaluate(1, back1, x_hat, r1)
    assert np.array_equal(y.view(np.int64), np.maximum(x.view(np.int64), 0))
    with pytest.raises(ValueError, match="truncated"):
        relu.ReluKey.from_bytes(k0.to_bytes()[:-1], 37)
    with pytest.raises(ValueError, match="truncated"):
        relu.ReluKey.from_words(k0.to_words()[:-1], 37)
    with pytest.raises(ValueError, match="truncated"):
        relu.ReluKey.from_bytes(k0.to_bytes(), 38)  # the key of another layer
    with pytest.raises(ValueError, match="inputs for 37"):
        relu.evaluate(0, k0, x_hat[:-1], r0[:-1])


def test_two_keygens_give_fresh_keys():
    r = rng.integers(0, 2**64, 100, dtype=U64)
    (a0, a1), (b0, b1) = relu.keygen(r), relu.keygen(r)
    for first, second in [(a0, b0), (a1, b1)]:
        assert not np.array_equal(first.dcf.seed, second.dcf.seed)
        assert not np.array_equal(first.dcf.s_cw, second.dcf.s_cw)
        assert not np.array_equal(first.m_r, second.m_r)
    assert np.array_equal(a0.dcf.s_cw, a1.dcf.s_cw)  # correction words are common, roots differ
    assert not np.array_equal(a0.dcf.seed, a1.dcf.seed)


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
def test_max_pool_from_relu_gates_matches_torch(kernel, stride, padding):
    x = rng.integers(-2**20, 2**20, (2, 3, 7, 7))
    index = maxpool.window_index(7, 7, kernel, stride, padding)
    windows = x.reshape(6, 49)[:, index].reshape(-1, index.shape[1])
    rounds = []

    def relu_layer(diff: np.ndarray) -> np.ndarray:
        rounds.append(diff.size)
        return relu_two_party(diff, 32)[0]

    result = maxpool.max_tree(ring(windows), relu_layer).view(np.int64)
    expected = F.max_pool2d(torch.from_numpy(x).double(), kernel, stride, padding).long().numpy()
    assert np.array_equal(result.reshape(expected.shape), expected)
    m = kernel[0] * kernel[1]
    assert rounds == [level * windows.shape[0] for level in maxpool.tree_levels(m)]
    assert sum(maxpool.tree_levels(m)) == m - 1
