"""MPC micro and end-to-end benchmarks (`make bench`).

Times are the client's (rank 0) wall clock for the op while the server (rank 1, one
thread each) does its half over loopback.
"""

import pytest

from pibench.bench import BenchOptions, bench_models


def _timed(benchmark, pair, op: str, rounds: int):
    pair.prepare(op)
    pair.announce(op)
    pair.run(op)  # warm-up, outside the statistics
    return benchmark.pedantic(pair.run, args=(op,), setup=lambda: pair.announce(op), rounds=rounds, iterations=1)


@pytest.mark.parametrize("n", [10_000, 100_000])
def test_relu(benchmark, pair, n):
    benchmark.extra_info["relus"] = n
    _timed(benchmark, pair, f"relu:{n}", rounds=10 if n <= 10_000 else 5)


def test_resnet18_layer_conv_relu(benchmark, pair):
    """ResNet18 stage-1 layer: 64->64 3x3 conv with shared weights on 32x32, then 65,536 ReLUs."""
    _timed(benchmark, pair, "resnet18_layer", rounds=5)


def test_resnet18_harness_vs_plain_crypten(benchmark, pair):
    """End to end on resnet18 (random weights, all ReLUs): the harness's online phase (default protocol,
    crypten:dealer: weights-fixed products, tuples preprocessed) vs a plain CrypTen script doing the same
    ops the stock way (TFP tuples made during the inference, weights re-opened by every product)."""
    repeats = 3
    _timed(benchmark, pair, "resnet18", rounds=repeats)
    plain = benchmark.stats.stats.median
    (result,) = bench_models(["resnet18"], BenchOptions(repeats=repeats))
    assert result.error == "", result.error
    harness = result.rows[0].latency_s_median
    benchmark.extra_info.update(plain_crypten_s=plain, harness_s=harness, ratio=harness / plain)
    print(f"\nresnet18 end to end: harness online {harness:.3f} s (offline {result.rows[0].offline_s:.3f} s), "
          f"plain CrypTen {plain:.3f} s, ratio {harness / plain:.2f}")
