"""crypten:fss end to end: agreement, the cost slope of ReLUs, per-party offline bytes, fresh keys per
inference, and the comparison domain k chosen per model from its plaintext range (see
pibench.mpc.crypten.fss_backend and pibench.mpc.fss.domain)."""


import numpy as np
import pytest
import torch

from pibench.bench import BenchOptions, bench_models
from pibench.modelfolder.spec import MODEL_SEED
from pibench.models import create_model
from pibench.mpc.crypten.dealer import deal, take_dealt
from pibench.mpc.crypten.preprocessing import PreprocessingError, Prg, Request
from pibench.mpc.fss import relu as relu_gate
from pibench.mpc.fss.domain import choose_bits, layer_ranges
from pibench.mpc.parties.launch import SessionConfig
from pibench.mpc.compiler import compile_model
from pibench.mpc.protocols import CLIENT, PROTOCOLS, SERVER

from helpers import density_sweep, kill_party_mid_run, save, tiny_nets

ONLINE_BYTES_PER_RELU = 16  # x + r: 8 B sent + 8 B received per party
TOLERANCE = PROTOCOLS.get("crypten:fss").logit_tolerance  # the largest logit error, and why: pibench.mpc.protocols


def relu_layer_bytes(relus: int) -> int:
    """Online bytes of one ReLU layer per party: x + r, then the masked DReLU bits, 64 to an 8-byte word."""
    return ONLINE_BYTES_PER_RELU * relus + 16 * -(-relus // 64)


def options(**kw) -> BenchOptions:
    return BenchOptions(protocol="crypten:fss", **kw)


def test_fss_nets_match_plaintext_and_report_both_parties_offline_bytes(tmp_path):
    folders = [save(tmp_path, net, model) for net, model in tiny_nets().items()]
    results = {r.model: r for r in bench_models(folders, options(repeats=1, batch=16, samples=32))}
    for name, r in results.items():
        row = r.rows[0]
        assert row.error == "", row.error
        assert row.protocol == "crypten:fss" and row.mpc_samples == 32
        assert row.max_logit_error < TOLERANCE and row.mpc_agreement >= 0.99, name
        # every ReLU op is two rounds; every max-pool op two rounds per level of its 2x2 tree
        for layer in r.layers:
            if layer.op == "relu":
                assert layer.rounds == 2 and layer.bytes == relu_layer_bytes(16 * layer.relus), layer
            if layer.op == "maxpool":
                assert layer.rounds == 4, layer
        # each party receives its own keys, the client its tuple shares too
        assert 8 <= row.fss_bits <= 24, (name, row.fss_bits)  # random small nets: well under 2^7 in real value
        keys = relu_gate.ReluKey.size(16 * row.relus, row.fss_bits)  # batch 16; max pooling adds its own keys
        assert row.offline_bytes == row.offline_bytes_client + row.offline_bytes_server
        assert row.offline_bytes_client > row.offline_bytes_server
        if name == "vgg_max":
            assert row.offline_bytes_server > keys
        else:
            assert row.offline_bytes_server == pytest.approx(keys, rel=1e-3)
    assert results["vgg_max"].rows[0].maxpool_bytes > 0


def test_online_bytes_grow_by_16_per_kept_relu_and_removed_relus_cost_nothing(tmp_path):
    results, relus, online = density_sweep(tmp_path, "crypten:fss")
    relu_layers = [[l for l in r.layers if l.op == "relu"] for r in results]
    for r, n, b, layers in zip(results, relus, online, relu_layers):
        assert r.rows[0].relu_bytes == b - online[0] == sum(relu_layer_bytes(l.relus) for l in layers)
        assert sum(l.relus for l in layers) == n
    assert relu_layers[0] == [] and all(l.rounds == 2 for layers in relu_layers for l in layers)
    assert results[-1].rows[0].rounds - results[0].rows[0].rounds == 2 * len(relu_layers[-1])
    assert results[0].rows[0].offline_bytes_server == 0  # no ReLU: no key for the server
    for r in results:  # layers.csv: each ReLU layer's key, per party; the server receives nothing else
        bits = r.rows[0].fss_bits
        for layer in r.layers:
            if layer.op == "relu":
                assert layer.offline_bytes_server == 8 * relu_gate.ReluKey.words(layer.relus, bits)
                assert layer.offline_bytes_client == layer.offline_bytes_server
        if r.rows[0].relus:  # these keys fit one piece (< 8 MiB): its length (8 bytes) ahead of the keys
            assert sum(layer.offline_bytes_server for layer in r.layers) + 8 == r.rows[0].offline_bytes_server


def prgs(seed: int) -> list[Prg]:
    return [Prg(bytes([seed, rank]) * 16) for rank in (CLIENT, SERVER)]


def test_every_inference_gets_fresh_masks_and_keys():
    """The dealer replays the same plan twice (two inferences): masks and both parties' keys all differ."""
    plan = [Request.make("relu", (300,), kwargs={"bits": 32})]
    dealer, (client, server) = prgs(1), prgs(1)  # the dealer holds copies of both parties' streams
    (first,), (second,) = deal(plan, dealer, []), deal(plan, dealer, [])  # (client's key, server's key)
    r_first = [client.ring((300,)), server.ring((300,))]  # each party's share of r, from its own stream
    r_second = [client.ring((300,)), server.ring((300,))]
    assert not torch.equal(r_first[0], r_second[0]) and not torch.equal(r_first[1], r_second[1])
    for part in (0, 1):  # the client's keys, the server's keys
        assert first[part].shape == second[part].shape == (relu_gate.ReluKey.words(300),)
        same = (first[part] == second[part]).double().mean()
        assert same < 0.01
    # and the keys work with the masks the parties drew: ReLU of an opened x + r
    x = torch.randint(-2**20, 2**20, (300,))
    x0 = torch.randint(-2**62, 2**62, (300,))
    for (client_words, server_words), (r0, r1) in [(first, r_first), (second, r_second)]:
        x_hat = (x + r0 + r1).numpy().view(np.uint64)
        keys = [relu_gate.ReluKey.from_words(words.numpy(), 300) for words in (client_words, server_words)]
        d_hat = relu_gate.masked_drelu(0, keys[0], x_hat) ^ relu_gate.masked_drelu(1, keys[1], x_hat)
        shares = [x0.numpy().view(np.uint64), (x - x0).numpy().view(np.uint64)]
        y = sum(relu_gate.finish(rank, keys[rank], x_hat, d_hat, shares[rank]) for rank in (0, 1))
        assert np.array_equal(y.view(np.int64), x.clamp(min=0).numpy())


def test_a_truncated_key_delivery_fails_naming_the_party():
    plan = [Request.make("fixed", (1, 2), (2, 3), op="matmul"), Request.make("relu", (10,), kwargs={"bits": 32})]

    def dealt(rank):
        fresh = [[torch.zeros(1, 2, dtype=torch.long)], [torch.zeros(10, dtype=torch.long)]]
        return [(r, mine) for r, mine in zip(plan, fresh) if rank == CLIENT or r.kind == "relu"]

    words = relu_gate.ReluKey.words(10, 32)
    server = dealt(SERVER)
    assert take_dealt(torch.zeros(words, dtype=torch.long), server, 0, SERVER) == 1
    assert server[0][1][-1].count == 10  # its key, parsed; the server gets no part of the product
    client = dealt(CLIENT)  # pieces hold whole tuples: the product's 3 words, then the key
    assert take_dealt(torch.zeros(3, dtype=torch.long), client, 0, CLIENT) == 1
    assert take_dealt(torch.zeros(words, dtype=torch.long), client, 1, CLIENT) == 2
    with pytest.raises(PreprocessingError, match="server: the dealer sent .* inside tuple #0 .* truncated"):
        take_dealt(torch.zeros(words - 1, dtype=torch.long), dealt(SERVER), 0, SERVER)
    with pytest.raises(PreprocessingError, match="client: the dealer sent .* inside tuple #1 .* truncated"):
        take_dealt(torch.zeros(words + 2, dtype=torch.long), dealt(CLIENT), 0, CLIENT)  # needs words + 3
    with pytest.raises(PreprocessingError, match="client: .* past the plan's last tuple"):
        take_dealt(torch.zeros(words + 4, dtype=torch.long), dealt(CLIENT), 0, CLIENT)


@pytest.mark.parametrize("name, bits", [("resnet18", 20), ("drd_c100_7k", 19), ("vgg16", 20),
                                        ("resnet_digits", 20), ("cnn_digits", 20)])
def test_registry_models_get_a_domain_well_under_the_default(name, bits):
    """The domain the launcher would choose for random inputs (seed 0): well under k = 32's 441 B per key."""
    torch.manual_seed(MODEL_SEED)
    program = compile_model(create_model(name).eval())
    x = torch.randn(8, *program.input_shape, generator=torch.Generator().manual_seed(0))
    ranges = layer_ranges(program, x)
    assert set(ranges) == {op.layer for op in program.ops if op.kind in ("relu", "maxpool")}
    assert choose_bits(ranges) == bits, (name, max(ranges.values()))  # resnet18: 2.98 -> 2 * 2.98 * 2^16 < 2^19


def test_layer_ranges_are_the_comparison_inputs():
    """A ReLU's largest |x|, a max-pool window's largest max - min, on a model small enough to check by hand."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                torch.nn.Linear(2 * 3 * 3, 2)).eval()
    program = compile_model(model, (1, 8, 8))
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pre = model[0](x)
        post = model[1](pre)
        spread = torch.nn.functional.max_pool2d(post, 2) + torch.nn.functional.max_pool2d(-post, 2)
    relu_layer, pool_layer = [op.layer for op in program.ops if op.kind in ("relu", "maxpool")]
    ranges = layer_ranges(program, x)
    assert ranges[relu_layer] == pytest.approx(float(pre.abs().max()), rel=1e-5)
    assert ranges[pool_layer] == pytest.approx(float(spread.max()), rel=1e-5)


def scaled_digits(tmp_path, factor: float) -> str:
    """cnn_digits (seeded weights) with its first conv multiplied by `factor`: inputs at that scale, in effect."""
    torch.manual_seed(MODEL_SEED)
    model = create_model("cnn_digits").eval()
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        first.weight.mul_(factor)
    return save(tmp_path, f"digits_x{factor:g}", model)


def test_both_sides_of_the_domain_bound(tmp_path):
    """Issue 24: the digits CNN with its first conv x32,768 gave 12.5 % agreement at k = 32 with an empty error.
    Now its k is chosen wide enough (100 % agreement); x2^46 fits no k <= 64 and its row fails naming the layer
    and the bound, before any party runs; the plain model keeps a small k."""
    folders = [scaled_digits(tmp_path, f) for f in (1.0, 32768.0, 2.0**46)]
    plain, scaled, beyond = bench_models(folders, options(repeats=1, batch=8, samples=8))
    for r in (plain, scaled):
        row = r.rows[0]
        assert row.error == "" and row.mpc_agreement == 1.0, (r.model, row.error, row.mpc_agreement)
    assert plain.rows[0].fss_bits == 20 and scaled.rows[0].fss_bits == 35  # 32 would wrap: 12.5 % agreement
    assert plain.rows[0].max_logit_error < TOLERANCE
    assert scaled.rows[0].max_logit_error < 28  # crypten:dealer's on this model in issue 24 (0.57 measured here)
    error = beyond.rows[0].error
    assert error.startswith("crypten:fss cannot compare the inputs of layer ") and "largest |input| is" in error
    assert "what k = 64 bits hold" in error and beyond.rows[0].bytes_per_party is None
    assert beyond.rows[0].fss_bits is None


def test_a_dealer_that_dies_while_making_keys_fails_the_session_fast_without_orphans():
    """Making resnet18's keys (~1.5 s per inference) is most of the dealer's time in a 20-repeat job: kill it
    then, and every party is gone within a minute."""
    kill_party_mid_run(SessionConfig(protocol="crypten:fss", job_timeout=300), role="dealer", after_s=4.0)


def test_keys_that_cannot_fit_this_machine_fail_the_model_before_any_party_loads_it():
    """wrn22_8 at batch 1024: at least 67 GB of keys per party. The model's row says why and what to do, before
    any party loads it and before the plaintext range is measured."""
    (big,) = bench_models(["wrn22_8"], options(batch=1024, repeats=1, samples=0))
    assert big.error.startswith("crypten:fss needs at least ") and "GB for one inference at batch 1024" in big.error
    assert "(k = 8)" in big.error  # checked at the smallest domain, before the plaintext range is measured
    assert "lower --batch" in big.error and big.rows[0].bytes_per_party is None


def test_summary_line_names_k_and_warns_below_full_agreement():
    from pibench.commands.bench import _line, _warning

    s = dict(model="m", error="", protocol="crypten:fss", relus=10, latency_s_median=0.1, latency_s_p10=0.09,
             latency_s_p90=0.11, bytes_per_party=1e6, rounds=3, offline_s=None, offline_bytes=None,
             offline_bytes_client=None, offline_bytes_server=None, projected_latency_s={"lan": 0.1},
             mpc_samples=8, agreement=0.875, max_logit_error=2.1e5, fss_bits=32)
    assert ", k = 32" in _line(s)
    warning = _warning(s)
    assert warning.startswith("WARNING m: MPC top-1 differs from plaintext on 12.50% of 8 inputs")
    assert "max logit error 2.1e+05 exceeds crypten:fss's tolerance" in warning
    assert _warning({**s, "agreement": 1.0, "max_logit_error": 1e-4}) is None


def test_key_buffers_are_reused_run_to_run_and_dropped_when_unused():
    from pibench.mpc.crypten.dealer import KeyBuffers

    pool = KeyBuffers()
    a, b = pool.take((2, 10)), pool.take((2, 10))  # two layers of one size in one run: two buffers
    c = pool.take((2, 7))
    assert a is not b
    pool.release()
    again = [pool.take((2, 10)), pool.take((2, 10))]
    assert {id(x) for x in again} == {id(a), id(b)}
    pool.release()  # the (2, 7) buffer was not used in this run: dropped
    assert pool.take((2, 7)) is not c
