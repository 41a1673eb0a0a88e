"""Garbled-circuit micro-benchmarks (`make bench`), one thread, no communication: 100,000 ReLUs at k = 32.

Garbling (the server, offline), evaluation (the client, online) and the IKNP extension for
the client's 95 input bits per ReLU. Issue 26's targets: garbling <= 30 us and evaluation
<= 20 us per ReLU on one core (Delphi: ~30 and ~55 us).
"""

import numpy as np
import pytest

from pibench.mpc.gc import iknp, labels, relu

RELUS = 100_000
BITS = relu.DEFAULT_BITS
GARBLE_BOUND_US = 30  # per ReLU, the median of the runs
EVALUATE_BOUND_US = 20


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(0)
    x = rng.integers(-2**20, 2**20, RELUS).astype(np.int64)
    r, mask = rng.integers(0, 2**64, (2, RELUS), dtype=np.uint64)
    delta = labels.random_delta()
    client_zero = labels.random_labels((relu.client_input_count(BITS), RELUS, 2))
    garbled, tables = relu.garble(client_zero, delta, BITS)
    choices = relu.client_bits(r, mask, BITS)
    client = labels.select(client_zero, choices, delta)
    return x, r, mask, delta, client_zero, garbled, tables, (client, choices)


def test_gc_garble(benchmark, layer):
    _, _, _, delta, client_zero, *_ = layer
    result = benchmark.pedantic(relu.garble, args=(client_zero, delta, BITS), rounds=3, iterations=1)
    us_per_relu = benchmark.stats["median"] / RELUS * 1e6
    benchmark.extra_info.update(relus=RELUS, us_per_relu=us_per_relu, table_bytes_per_relu=result[1].nbytes / RELUS)
    assert us_per_relu <= GARBLE_BOUND_US, f"garbling takes {us_per_relu:.1f} us per ReLU"


def test_gc_evaluate(benchmark, layer):
    x, r, mask, _, _, garbled, tables, client = layer
    server = garbled.encode(x.view(np.uint64) - r)
    colors = benchmark.pedantic(relu.evaluate, args=(tables, server, *client, mask), rounds=3, iterations=1)
    us_per_relu = benchmark.stats["median"] / RELUS * 1e6
    benchmark.extra_info.update(relus=RELUS, us_per_relu=us_per_relu)
    assert np.array_equal((garbled.decode_output(colors) + mask).view(np.int64), np.maximum(x, 0))
    assert us_per_relu <= EVALUATE_BOUND_US, f"evaluation takes {us_per_relu:.1f} us per ReLU"


def test_gc_ot_extension(benchmark):
    """Both sides of the IKNP extension for one layer's client inputs (95 OTs per ReLU), in one process."""
    receiver, sender = iknp.Receiver(), iknp.Sender()
    receiver.setup(sender.setup_answer(receiver.base.message))
    count = relu.client_input_count(BITS) * RELUS // 10  # 10,000 ReLUs' worth
    choices = np.random.default_rng(1).integers(0, 2, count).astype(np.uint8)
    delta = labels.random_delta()

    def extend() -> None:
        u, pending = receiver.extend(choices)
        _, y = sender.extend(u, count, delta)
        pending.labels(y)

    benchmark.pedantic(extend, rounds=3, iterations=1)
    benchmark.extra_info.update(ots=count, us_per_relu=benchmark.stats["median"] / (RELUS // 10) * 1e6)
