"""FSS and key-stream micro-benchmarks (`make bench`), one thread, no communication.

ReLU keys and their evaluation for resnet18's 557,056 ReLUs at k = 32, next to the
AES floor of the same evaluation (two fixed-key AES blocks per DCF level and ReLU);
and the dealer protocol's key stream (AES-256-CTR) against SHAKE-256 through hashlib.
"""

import hashlib
import os

import numpy as np
import pytest

from pibench.mpc.fss import prg, relu
from pibench.mpc.crypten.preprocessing import Prg

RELUS = 557_056  # resnet18 (CIFAR), all ReLUs
DRAW = 1_000_000  # ring elements per key-stream draw


@pytest.fixture(scope="module")
def masks():
    return np.random.default_rng(0).integers(0, 2**64, RELUS, dtype=np.uint64)


def test_relu_keygen(benchmark, masks):
    """The dealer's keys for all of resnet18's ReLUs, made in the form it sends them."""
    benchmark.extra_info.update(relus=RELUS, key_bytes_per_relu=relu.ReluKey.size(RELUS) / RELUS)
    benchmark.pedantic(relu.keygen_words, args=(masks,), rounds=3, iterations=1)


def test_relu_evaluate(benchmark, masks):
    key, _ = relu.keygen(masks)
    benchmark.extra_info["relus"] = RELUS
    benchmark.pedantic(relu.evaluate, args=(0, key, masks, masks), rounds=3, iterations=1)


def test_relu_evaluate_aes_floor(benchmark):
    """The AES part alone: (k - 1) levels of 2·RELUS blocks, one ECB call each."""
    blocks = prg.random_seeds(2 * RELUS)

    def levels() -> None:
        for _ in range(relu.DEFAULT_BITS - 1):
            prg.aes(blocks)

    benchmark.pedantic(levels, rounds=3, iterations=1)


def test_key_stream_aes_ctr(benchmark):
    stream = Prg(os.urandom(32))
    benchmark.extra_info["mb"] = 8 * DRAW / 1e6
    benchmark.pedantic(stream.ring, args=((DRAW,),), rounds=20, iterations=1)


def test_key_stream_shake256(benchmark):
    """What the key streams used before: SHAKE-256(key || counter) through hashlib."""
    key = os.urandom(32)
    benchmark.extra_info["mb"] = 8 * DRAW / 1e6
    benchmark.pedantic(lambda: hashlib.shake_256(key + bytes(8)).digest(8 * DRAW), rounds=20, iterations=1)


# resnet18's online phase under crypten:fss took 0.63-0.69x crypten:dealer's on a quiet 2-core
# machine: 39 rounds and 19.6 MB instead of 175 and 269 MB, paid for by evaluating 31 DCF levels
# per ReLU locally (about 0.2 s per party). Above 0.9x the evaluation has slowed down again (it
# was 0.4 s per party and the ratio 1.01 with a broadcast mask per level), or the machine is busy.
FSS_ONLINE_RATIO_BOUND = 0.9


def test_resnet18_online_fss_vs_dealer(benchmark):
    """resnet18 (random weights, all ReLUs) under crypten:fss and crypten:dealer in one run: online latency
    ratio, WAN projections, and each protocol's offline phase (the README gives the measured values)."""
    from pibench.bench import BenchOptions, bench_models

    rows = {}
    for protocol in ("crypten:dealer", "crypten:fss"):
        (result,) = bench_models(["resnet18"], BenchOptions(repeats=3, protocol=protocol))
        assert result.error == "", result.error
        rows[protocol] = {r.network: r for r in result.rows}
    dealer, fss = rows["crypten:dealer"]["lan"], rows["crypten:fss"]["lan"]
    ratio = fss.latency_s_median / dealer.latency_s_median
    benchmark.extra_info.update(online_ratio_fss_to_dealer=ratio, fss_online_s=fss.latency_s_median,
                                dealer_online_s=dealer.latency_s_median,
                                fss_wan_s=rows["crypten:fss"]["wan"].projected_latency_s)
    for name, by_net in rows.items():
        r = by_net["lan"]
        print(f"\nresnet18 {name}: online {r.latency_s_median:.3f} s, {r.bytes_per_party / 1e6:.1f} MB/party, "
              f"{r.rounds} rounds; offline {r.offline_s:.3f} s, client {r.offline_bytes_client / 1e6:.1f} MB, "
              f"server {r.offline_bytes_server / 1e6:.1f} MB; WAN projected {by_net['wan'].projected_latency_s:.2f} s")
    print(f"resnet18 online latency, crypten:fss / crypten:dealer: {ratio:.2f}")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert ratio < FSS_ONLINE_RATIO_BOUND, f"crypten:fss online is {ratio:.2f}x crypten:dealer's"
