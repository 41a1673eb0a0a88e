"""crypten:gc end to end: agreement, exact online costs (520 B and one round trip per kept ReLU layer, nothing
for weighted layers but the first layer's input), the offline material per ReLU, and the activation range the
circuit reads (see pibench.mpc.crypten.gc_backend)."""

import math

from pibench.bench import BenchOptions, bench_models
from pibench.mpc.fss.relu import ReluKey
from pibench.mpc.gc import circuits, iknp
from pibench.mpc.gc import relu as gc_relu
from pibench.mpc.protocols import PROTOCOLS

from helpers import density_sweep, save, tiny_nets, with_density

LABEL_BYTES = 16
ONLINE_BYTES_PER_RELU = gc_relu.DEFAULT_BITS * LABEL_BYTES + 8  # the server's labels + 64 output colors
INPUT_BYTES = 8  # per element of the first layer's input: x - r0
WEIGHTED = ("conv", "linear", "affine")
TOLERANCE = PROTOCOLS.get("crypten:gc").logit_tolerance  # the largest logit error, and why: pibench.mpc.protocols


def options(**kw) -> BenchOptions:
    return BenchOptions(protocol="crypten:gc", **kw)


def test_online_bytes_per_relu_are_the_labels_of_the_servers_share_and_the_output_colors():
    assert ONLINE_BYTES_PER_RELU == 520
    assert gc_relu.table_words(1) * 8 == LABEL_BYTES * circuits.ciphertexts(32) == 3488


def test_gc_nets_match_plaintext_with_free_weighted_layers(tmp_path):
    folders = [save(tmp_path, net, model) for net, model in tiny_nets().items()]
    batch = 4
    results = {r.model: r for r in bench_models(folders, options(repeats=1, batch=batch, samples=8))}
    for name, r in results.items():
        row = r.rows[0]
        assert row.error == "", row.error
        assert row.protocol == "crypten:gc" and row.mpc_samples == 8
        assert row.max_logit_error < TOLERANCE and row.mpc_agreement == 1.0, name
        assert row.linear_bytes == 0
        layers = r.layers
        assert layers[0].op == "input" and layers[0].rounds == 1
        for layer in layers:
            if layer.op in WEIGHTED:
                assert layer.bytes == 0 and layer.rounds == 0, (name, layer)
            if layer.op == "relu":
                assert layer.rounds == 2 and layer.bytes == ONLINE_BYTES_PER_RELU * batch * layer.relus, layer
            if layer.op == "maxpool":
                assert layer.rounds == 4, layer  # a 2x2 window: two levels of ReLU layers
        # the server receives the dealer's part and the OTs' U, the client the tables, the OTs' y and more
        assert row.offline_bytes == row.offline_bytes_client + row.offline_bytes_server
        tables = gc_relu.table_words(batch * row.relus) * 8
        assert row.offline_bytes_client > tables
    assert results["vgg_max"].rows[0].maxpool_bytes > 0


def test_online_bytes_grow_by_520_per_kept_relu_and_removed_relus_cost_nothing(tmp_path):
    results, relus, online = density_sweep(tmp_path, "crypten:gc")
    assert [r.rows[0].relu_bytes for r in results] == [ONLINE_BYTES_PER_RELU * n for n in relus]
    for n, b in zip(relus, online):
        assert b - online[0] == ONLINE_BYTES_PER_RELU * n
    first = results[0].layers[0]  # the client's x - r0, 8 B per input element, and nothing else for linear layers
    assert first.op == "input" and first.bytes == INPUT_BYTES * math.prod((1, 8, 8))
    relu_layers = [[l for l in r.layers if l.op == "relu"] for r in results]
    assert relu_layers[0] == [] and all(l.rounds == 2 for layers in relu_layers for l in layers)
    assert results[-1].rows[0].rounds - results[0].rows[0].rounds == 2 * len(relu_layers[-1])
    for r in results:  # per ReLU layer offline: the client received its tables and the OT corrections
        for layer in r.layers:
            if layer.op == "relu":
                ots = iknp.padded(gc_relu.client_input_count(gc_relu.DEFAULT_BITS) * layer.relus)
                assert layer.offline_bytes_client == gc_relu.table_words(layer.relus) * 8 + 16 * ots
                assert layer.offline_bytes_server == 16 * ots


def test_every_crypten_protocol_reports_client_storage_and_peak_memory(tmp_path):
    """client_storage_bytes: what the client holds before an online inference (nothing without preprocessing);
    peak_rss_*: each party's resident-set high-water mark for the model, the dealer's where there is one."""
    folder = save(tmp_path, "d100", with_density(1.0, 0))
    storage, bits = {}, {}
    for protocol in ("crypten:tfp", "crypten:dealer", "crypten:fss", "crypten:gc"):
        (result,) = bench_models([folder], BenchOptions(protocol=protocol, repeats=1, samples=0))
        row = result.rows[0]
        assert row.error == "", row.error
        assert 50e6 < row.peak_rss_client < 8e9 and 50e6 < row.peak_rss_server < 8e9, protocol
        assert (row.peak_rss_dealer is None) if protocol == "crypten:tfp" else (50e6 < row.peak_rss_dealer < 8e9)
        storage[protocol], bits[protocol] = row.client_storage_bytes, row.fss_bits
    relus = 4608
    assert storage["crypten:tfp"] == 0
    assert storage["crypten:dealer"] > 0
    assert storage["crypten:fss"] > ReluKey.size(relus, bits["crypten:fss"])  # its keys, masks and tuple shares
    gc_per_relu = gc_relu.table_words(1) * 8 + 17 * gc_relu.client_input_count(gc_relu.DEFAULT_BITS)
    assert gc_per_relu * relus < storage["crypten:gc"] < (gc_per_relu + 200) * relus


def test_garbled_circuits_that_cannot_fit_this_machine_fail_the_model_before_any_party_loads_it():
    (big,) = bench_models(["wrn22_8"], options(batch=1024, repeats=1, samples=0))
    assert big.error.startswith("crypten:gc needs about ") and "GB for one inference at batch 1024" in big.error
    assert "lower --batch" in big.error and big.rows[0].bytes_per_party is None
