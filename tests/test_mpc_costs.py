"""The README's cost numbers, derived from the compiled program and compared with what the parties measure.

Rounds and bytes are deterministic: each op of a program costs a fixed number of rounds
and bytes per element under a protocol, so a model's totals follow from its program.
Every CrypTen protocol states its per-op rounds and bytes per ReLU in tests/helpers.py (ROUNDS,
BYTES_PER_RELU); a new protocol has to state them too.
"""

import math

import pytest

from pibench.bench import BenchOptions, bench_models
from pibench.models import create_model
from pibench.mpc.compiler import compile_model
from pibench.mpc.program import INPUT, Program
from pibench.mpc.protocols import PROTOCOLS

from helpers import BYTES_PER_RELU, ROUNDS, op_rounds, program_rounds, save, tiny_nets

# crypten:fss opens one bit per ReLU too, 64 to an 8-byte word per layer, sent + received (docs/fss.md)
BYTES_PER_BIT_WORD = {"crypten:dealer": 0, "crypten:tfp": 0, "crypten:fss": 16, "crypten:gc": 0}


def relu_layer_bytes(protocol: str, relus: int) -> int:
    return BYTES_PER_RELU[protocol] * relus + BYTES_PER_BIT_WORD[protocol] * -(-relus // 64)


BYTES_PER_OPENED = 16  # a weights-fixed product opens 8 bytes per input element, sent and received (README)


# The ops whose weights multiply a shared input (README): a conv's and a linear layer's weight, a stand-alone
# BatchNorm's scale. Each opens its input once per inference under the dealer protocols.
PRODUCT_OPS = ("conv", "linear", "affine")


def opened_bytes(program: Program, batch: int) -> dict[str, int]:
    """Per layer with a product weight (conv, linear, BatchNorm's scale): 16 B per element of its input."""
    shape = {INPUT: program.input_shape, **{i: op.shape for i, op in enumerate(program.ops)}}
    return {op.layer: BYTES_PER_OPENED * batch * math.prod(shape[op.inputs[0]]) for op in program.ops
            if op.kind in PRODUCT_OPS}


def test_every_crypten_protocol_states_its_round_costs():
    assert sorted(ROUNDS) == PROTOCOLS.names("crypten:*")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The test nets (ResNet, VGG with max and avg pooling, pre-activation WRN) with random partial masks."""
    root = tmp_path_factory.mktemp("costs")
    return {net: (save(root, net, model), compile_model(model)) for net, model in tiny_nets().items()}


@pytest.mark.parametrize("protocol", sorted(ROUNDS))
def test_measured_rounds_and_bytes_are_the_programs(folders, protocol):
    batch = 2
    results = list(bench_models([f for f, _ in folders.values()],
                                BenchOptions(repeats=1, batch=batch, samples=0, protocol=protocol)))
    for (net, (_, program)), result in zip(folders.items(), results):
        row = result.rows[0]
        assert row.error == "", row.error
        assert row.rounds == program_rounds(program, protocol), net
        kinds = ["input", *(op.kind for op in program.ops), "output"]
        ops = [None, *program.ops, None]
        assert [layer.rounds for layer in result.layers] == [op_rounds(protocol, k, o) for k, o in zip(kinds, ops)]
        # every kept ReLU costs exactly the protocol's bytes per party, a partial layer's like a full one's
        relu_ops = [op for op in program.ops if op.kind == "relu"]
        for layer, op in zip(result.layers[1:-1], program.ops):
            if op.kind == "relu":
                assert layer.bytes == relu_layer_bytes(protocol, batch * op.relus), (net, layer.layer)
        assert row.relu_bytes == sum(relu_layer_bytes(protocol, batch * op.relus) for op in relu_ops)
        if protocol != "crypten:tfp":  # tfp re-opens the weights too: more, and not per element
            opened = opened_bytes(program, batch)
            if protocol == "crypten:gc":  # linear layers are free online: their correlations came offline
                opened = dict.fromkeys(opened, 0)
            assert {l.layer: l.bytes for l in result.layers if l.layer in opened} == opened, net
            assert row.linear_bytes == sum(opened.values()), net


def test_preactivation_affine_ops_count_as_linear(folders):
    """wrn22_8's BatchNorm after a residual sum is an affine op; its opened input is linear traffic."""
    program = folders["wrn_preact"][1]
    affine = [op for op in program.ops if op.kind == "affine"]
    assert affine
    affine_bytes = sum(v for k, v in opened_bytes(program, 1).items() if k in {op.layer for op in affine})
    (result,) = bench_models([folders["wrn_preact"][0]], BenchOptions(repeats=1, samples=0))
    row = result.rows[0]
    assert row.linear_bytes == sum(opened_bytes(program, 1).values())
    assert sum(l.bytes for l in result.layers if l.op == "affine") == affine_bytes > 0


@pytest.mark.parametrize("model, rounds, linear_bytes", [("resnet18", 175, 10_674_176), ("drd_c100_49k", 58, None),
                                                         ("drd_c100_7k", 43, 1_150_976), ("resnet_digits", 74, None)])
def test_readme_rounds_follow_from_the_program(model, rounds, linear_bytes):
    """The README's rounds column: 9 per ReLU layer, 1 per linear layer, 1 to reveal the logits; and its
    linear-layer bytes per party (resnet18's 10.7 MB: 16 B for each of the 667,136 elements its products open)."""
    program = compile_model(create_model(model))
    assert program_rounds(program, "crypten:dealer") == rounds
    if linear_bytes is not None:
        assert sum(opened_bytes(program, 1).values()) == linear_bytes
