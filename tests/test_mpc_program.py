"""The MPC compiler, its plaintext execution, exact decoding, network profiles and result files (no parties)."""

import pytest
import torch
from torch import nn

from pibench.models import create_model
from pibench.mpc.backend import decode_ring, run_plain
from pibench.mpc.crypten.compat import import_crypten
from pibench.mpc.net.network import NetworkProfile, parse_network, parse_networks
from pibench.mpc.compiler import compile_model
from pibench.mpc.program import CompileError
from pibench.relu import MaskedReLU, masked_relus
from pibench.results import LayerRow, ResultRow, append_rows, load_results

from helpers import NETS, WithGelu, randomize, tiny_net


@pytest.mark.parametrize("net", sorted(NETS))
def test_program_computes_the_model(net):
    model = tiny_net(net)
    program = compile_model(model)
    x = torch.randn(4, *program.input_shape)
    with torch.no_grad():
        assert torch.allclose(run_plain(program, x), model(x), atol=1e-5)
    assert program.relus == sum(layer.relus for layer in masked_relus(model).values())


def test_batchnorm_folds_into_conv_and_preactivation_bn_is_affine():
    model = tiny_net("wrn_preact")
    kinds = [op.kind for op in compile_model(model).ops]
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = [n for n in compile_model(model).notes if n.startswith("folded")]
    # BN after a residual sum (next block's bn1, the final bn) cannot fold: affine ops.
    assert kinds.count("affine") == n_bn - len(folded) > 0
    resnet = compile_model(randomize(create_model("resnet_digits")))
    assert "affine" not in [op.kind for op in resnet.ops]


def test_masks_decide_relu_ops():
    model = create_model("resnet_digits")
    layers = masked_relus(model)
    names = list(layers)
    layers[names[0]].mask = torch.zeros_like(layers[names[0]].mask)  # all false: dropped
    partial = layers[names[1]].mask.clone()
    partial.view(-1)[::3] = False
    layers[names[1]].mask = partial
    program = compile_model(model)
    relu_ops = {op.layer: op for op in program.ops if op.kind == "relu"}
    assert names[0] not in relu_ops
    assert relu_ops[names[1]].relus == int(partial.sum())
    assert torch.equal(relu_ops[names[1]].attrs["index"], partial.flatten().nonzero().flatten())
    assert "index" not in relu_ops[names[2]].attrs  # all true: a full ReLU
    assert program.relus == sum(layer.relus for layer in layers.values())


def test_maxpool_counts_comparisons_and_macs_are_counted():
    program = compile_model(create_model("cnn_digits", pool="max"))
    (pool,) = [op for op in program.ops if op.kind == "maxpool"]
    assert pool.comparisons == 32 * 4 * 4 * 3  # 2x2 windows: 3 comparisons per output
    conv0 = program.ops[0]
    assert conv0.kind == "conv" and conv0.macs == 16 * 8 * 8 * 1 * 9


def test_public_program_has_no_weights_but_the_same_fingerprint():
    program = compile_model(randomize(create_model("resnet_digits")))
    public = program.public()
    assert program.has_weights and not public.has_weights
    assert all(v is None for op in public.ops for v in op.weights.values())
    assert public.fingerprint() == program.fingerprint()
    other = compile_model(randomize(create_model("resnet_digits"), seed=1))
    assert other.fingerprint() != program.fingerprint()  # different masks, different protocol


class WithBatchCat(nn.Module):
    def forward(self, x):
        return torch.cat([x, x], 0).flatten(1)


class WithScaledAdd(nn.Module):
    def forward(self, x):
        return x.add(x, alpha=2).flatten(1)


def test_unsupported_ops_fail_at_compile_time_naming_op_and_layer():
    with pytest.raises(CompileError, match=r"GELU at layer 'act'"):
        compile_model(WithGelu(), (1, 8, 8))
    with pytest.raises(CompileError, match=r"function cat that changes the batch dimension"):
        compile_model(WithBatchCat(), (1, 8, 8))
    with pytest.raises(CompileError, match=r"add with 2 arguments and keywords \['alpha'\]"):
        compile_model(WithScaledAdd(), (1, 8, 8))  # x + 2x: compiling it as x + x would be wrong


def test_identity_and_dropout_vanish():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Dropout(0.5), nn.Identity(), MaskedReLU(), nn.Flatten(), nn.Linear(72, 3))
    model[3].mask = torch.ones(2, 6, 6, dtype=torch.bool)
    program = compile_model(model, (1, 8, 8))
    assert [op.kind for op in program.ops] == ["conv", "relu", "flatten", "linear"]


def test_exact_decoding_of_negative_fixed_point_values():
    """CrypTen's decoder maps -2.99998617 to -3.99998; decoding the ring integers exactly does not."""
    crypten = import_crypten()
    from crypten.encoder import FixedPointEncoder

    encoder = FixedPointEncoder()
    value = torch.tensor([-2.99998617, 1.25, -0.5])
    ring = encoder.encode(value)
    share0 = torch.randint(-(2**62), 2**62, ring.shape)  # two additive shares wrap around the ring
    revealed = share0 + (ring - share0)
    assert abs(float(encoder.decode(revealed)[0]) - (-2.99998617)) > 0.9  # the bug this guards against
    assert torch.allclose(decode_ring(revealed, encoder.scale), value.double(), atol=2 / encoder.scale)
    assert crypten  # imported through the shim


def test_network_profiles_and_projection():
    assert parse_network("lan") == NetworkProfile("lan", 3000.0, 0.3)
    assert parse_network("wan") == NetworkProfile("wan", 400.0, 40.0)
    assert parse_network("100mbit") == NetworkProfile("100mbit", 100.0, 0.0)
    assert parse_network("1gbit").bandwidth_mbps == 1000.0
    assert parse_network("dsl:50:20") == NetworkProfile("dsl", 50.0, 20.0)
    assert [p.name for p in parse_networks("lan,wan")] == ["lan", "wan"]
    for bad in ("moon", "x:0:1", "x:fast:1"):
        with pytest.raises(ValueError, match="bad network profile"):
            parse_network(bad)
    wan = parse_network("wan")
    # 1 s compute + 10 rounds x 40 ms + 50 MB at 400 Mbit/s (1 s)
    assert wan.project(1.0, 10, 50e6) == pytest.approx(1.0 + 0.4 + 1.0)


def test_results_csv_appends_reopens_and_rejects_other_schemas(tmp_path):
    path = tmp_path / "results.csv"
    append_rows(path, [ResultRow("r1", "t", "m1", relus=5, latency_s_samples="0.1;0.2")])
    append_rows(path, [ResultRow("r1", "t", "m2", relus=7), ResultRow("r1", "t", "m3", error="boom")])
    df = load_results(tmp_path)
    assert list(df["model"]) == ["m1", "m2", "m3"]
    assert list(df["relus"][:2]) == [5, 7] and df["error"].iloc[2] == "boom"
    assert df["error"].isna().iloc[0]
    with pytest.raises(ValueError, match="existing columns do not match"):
        append_rows(path, [LayerRow("r1", "m1", 0, "conv", "conv1", 0, 0.1, 10, 1)])
