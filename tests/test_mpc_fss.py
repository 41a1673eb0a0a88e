"""crypten:fss end to end: agreement, the cost slope of ReLUs, per-party offline bytes, fresh keys per
inference, and the activation range that the one-round gate assumes (see pibench.mpc.crypten.fss_backend)."""

import time

import numpy as np
import pytest
import torch

from pibench.bench import BenchOptions, bench_models
from pibench.model_spec import MODEL_SEED
from pibench.models import create_model
from pibench.mpc.backend import TorchBackend, run_program
from pibench.mpc.crypten.dealer import deal, take_dealt
from pibench.mpc.crypten.preprocessing import PreprocessingError, Prg, Request
from pibench.mpc.fss import relu as relu_gate
from pibench.mpc.parties.launch import SessionConfig
from pibench.mpc.compiler import compile_model
from pibench.mpc.protocols import CLIENT, SERVER

from test_mpc_parties import kill_party_mid_run, save, with_density
from test_mpc_program import NETS, randomize

ONLINE_BYTES_PER_RELU = 16  # x + r: 8 B sent + 8 B received per party


def options(**kw) -> BenchOptions:
    return BenchOptions(protocol="crypten:fss", **kw)


def test_fss_nets_match_plaintext_and_report_both_parties_offline_bytes(tmp_path):
    folders = []
    for i, (net, kwargs) in enumerate(sorted(NETS.items())):
        kwargs = dict(kwargs)
        folders.append(save(tmp_path, net, randomize(create_model(kwargs.pop("name"), **kwargs), seed=i)))
    results = {r.model: r for r in bench_models(folders, options(repeats=1, batch=16, samples=32))}
    for name, r in results.items():
        row = r.rows[0]
        assert row.error == "", row.error
        assert row.protocol == "crypten:fss" and row.mpc_samples == 32
        assert row.max_logit_error < 1e-2 and row.mpc_agreement >= 0.99, name
        # every ReLU op is one round; every max-pool op one round per level of its 2x2 tree
        for layer in r.layers:
            if layer.op == "relu":
                assert layer.rounds == 1 and layer.bytes == ONLINE_BYTES_PER_RELU * 16 * layer.relus, layer
            if layer.op == "maxpool":
                assert layer.rounds == 2, layer
        # each party receives its own keys (~1 KB per ReLU), the client its tuple shares too
        keys = relu_gate.ReluKey.size(1) * 16 * row.relus  # batch 16; max pooling adds its own keys
        assert row.offline_bytes == row.offline_bytes_client + row.offline_bytes_server
        assert row.offline_bytes_client > row.offline_bytes_server
        if name == "vgg_max":
            assert row.offline_bytes_server > keys
        else:
            assert row.offline_bytes_server == pytest.approx(keys, rel=1e-3)
    assert results["vgg_max"].rows[0].maxpool_bytes > 0


def test_online_bytes_grow_by_16_per_kept_relu_and_removed_relus_cost_nothing(tmp_path):
    densities = [0.0, 0.25, 0.5, 1.0]
    folders = [save(tmp_path, f"d{int(d * 100)}", with_density(d, i)) for i, d in enumerate(densities)]
    results = list(bench_models(folders, options(repeats=1, samples=0)))
    assert all(r.error == "" for r in results)
    relus = [r.rows[0].relus for r in results]
    online = [r.rows[0].bytes_per_party for r in results]
    assert relus[0] == 0 and relus[-1] == 4608
    assert [r.rows[0].relu_bytes for r in results] == [ONLINE_BYTES_PER_RELU * n for n in relus]
    for n, b in zip(relus, online):
        assert b - online[0] == ONLINE_BYTES_PER_RELU * n
    relu_layers = [[l for l in r.layers if l.op == "relu"] for r in results]
    assert relu_layers[0] == [] and all(l.rounds == 1 for layers in relu_layers for l in layers)
    assert results[-1].rows[0].rounds - results[0].rows[0].rounds == len(relu_layers[-1])
    assert results[0].rows[0].offline_bytes_server == 0  # no ReLU: no key for the server
    server = [r.rows[0].offline_bytes_server for r in results]
    assert server[-1] == pytest.approx(relu_gate.ReluKey.size(1) * relus[-1], rel=1e-3)
    for r in results:  # layers.csv: each ReLU layer's key, per party; the server receives nothing else
        for layer in r.layers:
            if layer.op == "relu":
                assert layer.offline_bytes_server == 8 * relu_gate.ReluKey.words(layer.relus)
                assert layer.offline_bytes_client == layer.offline_bytes_server
        if r.rows[0].relus:  # these keys fit one piece (< 8 MiB): its length (8 bytes) ahead of the keys
            assert sum(layer.offline_bytes_server for layer in r.layers) + 8 == r.rows[0].offline_bytes_server


def prgs(seed: int) -> list[Prg]:
    return [Prg(bytes([seed, rank]) * 16) for rank in (CLIENT, SERVER)]


def test_every_inference_gets_fresh_masks_and_keys():
    """The dealer replays the same plan twice (two inferences): masks and both parties' keys all differ."""
    plan = [Request.make("relu", (300,))]
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
    for (client_words, server_words), (r0, r1) in [(first, r_first), (second, r_second)]:
        x_hat = (x + r0 + r1).numpy().view(np.uint64)
        y = sum(relu_gate.evaluate(rank, relu_gate.ReluKey.from_words(words.numpy(), 300), x_hat,
                                   r.numpy().view(np.uint64))
                for rank, words, r in [(0, client_words, r0), (1, server_words, r1)])
        assert np.array_equal(y.view(np.int64), x.clamp(min=0).numpy())


def test_a_truncated_key_delivery_fails_naming_the_party():
    plan = [Request.make("fixed", (1, 2), (2, 3), op="matmul"), Request.make("relu", (10,))]

    def dealt(rank):
        fresh = [[torch.zeros(1, 2, dtype=torch.long)], [torch.zeros(10, dtype=torch.long)]]
        return [(r, mine) for r, mine in zip(plan, fresh) if rank == CLIENT or r.kind == "relu"]

    words = relu_gate.ReluKey.words(10)
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


class _RangeBackend(TorchBackend):
    """Plaintext run that records the largest |value| entering a ReLU or a max-pool comparison."""

    def __init__(self, program):
        super().__init__(program)
        self.largest = 0.0

    def relu(self, x):
        self.largest = max(self.largest, float(x.abs().max()))
        return super().relu(x)

    def maxpool(self, x, attrs):
        self.largest = max(self.largest, 2 * float(x.abs().max()))  # differences of two window values
        return super().maxpool(x, attrs)


@pytest.mark.parametrize("name", ["resnet18", "drd_c100_7k", "vgg16", "resnet_digits", "cnn_digits"])
def test_activations_stay_inside_the_gates_domain(name):
    """The gate reads x mod 2^32 at scale 2^16: every ReLU / max-pool input must satisfy |x| < 2^15."""
    torch.manual_seed(MODEL_SEED)
    model = create_model(name).eval()
    program = compile_model(model)
    x = torch.randn(8, *program.input_shape, generator=torch.Generator().manual_seed(0))
    backend = _RangeBackend(program)
    with torch.no_grad():
        run_program(program, backend, x)
    limit = 2 ** (relu_gate.DEFAULT_BITS - 1) / 2**16
    assert backend.largest < limit / 8, f"{name}: largest |activation| {backend.largest:.1f}, limit {limit:.0f}"
    scaled = torch.tensor([backend.largest * 2**16 * 0.999]).to(torch.int64).numpy()
    assert not relu_gate.out_of_range(scaled).any()


def test_a_dealer_that_dies_while_making_keys_fails_the_session_fast_without_orphans():
    """Making resnet18's keys (~1.5 s per inference) is most of the dealer's time in a 20-repeat job: kill it
    then, and every party is gone within a minute."""
    kill_party_mid_run(SessionConfig(protocol="crypten:fss", job_timeout=300), role="dealer", after_s=4.0)


def test_keys_that_cannot_fit_this_machine_fail_the_model_before_any_party_loads_it():
    """wrn22_8 at batch 1024: ~1.4 TB of keys per party. The model's row says why and what to do, in seconds."""
    t0 = time.monotonic()
    (big,) = bench_models(["wrn22_8"], options(batch=1024, repeats=1, samples=0))
    assert time.monotonic() - t0 < 30
    assert big.error.startswith("crypten:fss needs about ") and "GB for one inference at batch 1024" in big.error
    assert "lower --batch" in big.error and big.rows[0].bytes_per_party is None
