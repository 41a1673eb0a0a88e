"""Garbled-circuit and OT primitives of crypten:gc (pibench.mpc.gc): every gate, the ReLU circuit over edge
values and wrapping masks, garbled evaluation against the plaintext, base OT and IKNP extension."""

import itertools

import numpy as np
import pytest

from pibench.mpc.gc import base_ot, circuits, iknp, labels, relu
from pibench.mpc.gc.garble import Evaluator, Garbler, Plain

U64 = np.uint64


def garbled_gate(gate, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Garble `gate(engine, A, B)` for bit vectors a, b; evaluate on the labels of a, b; decode the output.
    B is the evaluator's known wire (label and bit) where the gate uses and_known."""
    delta = labels.random_delta()
    a0, b0 = labels.random_labels(a.shape + (2,)), labels.random_labels(b.shape + (2,))
    g = Garbler(delta, a.size * 4)
    out0 = gate(g, a0, b0)
    e = Evaluator(g.table[:g.words])
    b_label = labels.select(b0, b, delta)
    out = gate(e, labels.select(a0, a, delta), (b_label, b) if getattr(gate, "known", False) else b_label)
    e.finish()
    assert np.array_equal(labels.color(out0 ^ delta), labels.color(out0) ^ 1)  # the two labels' colors differ
    return labels.color(out) ^ labels.color(out0)  # the evaluator's color XOR the decode bit


def _known(gate):
    gate.known = True
    return gate


@pytest.mark.parametrize("name, gate, plain", [
    ("and", lambda e, a, b: e.and_(a, b), lambda a, b: a & b),
    ("and with a known input", _known(lambda e, a, b: e.and_known(a, b)), lambda a, b: a & b),
    ("not of and_known", _known(lambda e, a, b: e.not_(e.and_known(e.xor(a, a), b))), lambda a, b: a * 0 + 1),
    ("xor", lambda e, a, b: e.xor(a, b), lambda a, b: a ^ b),
    ("not", lambda e, a, b: e.not_(a), lambda a, b: a ^ 1),
    ("nand of xor", lambda e, a, b: e.not_(e.and_(e.xor(a, b), b)), lambda a, b: ((a ^ b) & b) ^ 1),
])
def test_every_gate_on_every_input(name, gate, plain):
    a, b = (np.array(v, dtype=np.uint8).repeat(50) for v in zip(*itertools.product((0, 1), repeat=2)))
    assert np.array_equal(garbled_gate(gate, a, b), plain(a, b)), name


def test_and_gates_leak_no_label_pair():
    """The evaluator's output label is one of the two, never the other (Delta stays hidden)."""
    delta = labels.random_delta()
    a0, b0 = labels.random_labels((64, 2)), labels.random_labels((64, 2))
    g = Garbler(delta, 4 * 64)
    z0 = g.and_(a0, b0)
    e = Evaluator(g.tables())
    ones = np.ones(64, np.uint8)
    z = e.and_(labels.select(a0, ones, delta), labels.select(b0, ones, delta))
    assert np.array_equal(z, z0 ^ delta)


def test_tables_of_another_circuit_are_refused():
    delta = labels.random_delta()
    g = Garbler(delta, 40)
    g.and_(labels.random_labels((10, 2)), labels.random_labels((10, 2)))
    with pytest.raises(ValueError, match="another circuit or were truncated"):
        Evaluator(g.tables()[:-1]).and_(labels.random_labels((10, 2)), labels.random_labels((10, 2)))
    e = Evaluator(np.concatenate([g.tables(), g.tables()]))
    e.and_(labels.random_labels((10, 2)), labels.random_labels((10, 2)))
    with pytest.raises(ValueError, match="belong to another circuit"):
        e.finish()
    with pytest.raises(ValueError, match="more than the 40 table words"):
        g.and_(labels.random_labels((1, 2)), labels.random_labels((1, 2)))


def edge_values(bits: int) -> np.ndarray:
    """Signed values at and around the domain's bounds and zero, plus random ones inside it."""
    half = 1 << (bits - 1)
    edges = [v for v in (-half, -half + 1, -2, -1, 0, 1, 2, half - 2, half - 1) if -half <= v < half]
    inside = np.random.default_rng(bits).integers(-half, half, 200)
    return np.concatenate([np.array(edges, dtype=np.int64), inside])


def shares_and_masks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Server share s = x - r, client share r and output mask r', including masks that make y - r' wrap."""
    rng = np.random.default_rng(len(x))
    r = rng.integers(0, 2**64, x.size, dtype=U64)
    r[:3] = [0, 2**64 - 1, 2**63][:x.size]
    mask = rng.integers(0, 2**64, x.size, dtype=U64)
    mask[-6:] = [0, 1, 2**64 - 1, 2**63, 2**32 - 1, 2**31][-x.size:]
    return x.view(U64) - r, r, mask


def plain_relu(s: np.ndarray, r: np.ndarray, mask: np.ndarray, bits: int) -> np.ndarray:
    """The circuit on cleartext bits (Plain engine): z as uint64."""
    return relu.plain(s, r, mask, bits)


@pytest.mark.parametrize("bits", [2, 8, 32, 64])
def test_and_gate_count_of_the_circuit(bits):
    e = Plain()
    wires = relu.client_bits(np.zeros(3, U64), np.ones(3, U64), bits)
    circuits.relu(e, relu.to_bits(np.zeros(3, U64), bits), wires[:bits], wires[bits:2 * bits - 1],
                  wires[2 * bits - 1:])
    assert e.ands == circuits.and_gates(bits) * 3


@pytest.mark.parametrize("bits", [2, 3, 8, 16, 32, 63, 64])
def test_relu_circuit_in_the_clear_is_relu_minus_the_mask(bits):
    x = edge_values(bits)
    s, r, mask = shares_and_masks(x)
    z = plain_relu(s, r, mask, bits)
    assert np.array_equal((z + mask).view(np.int64), np.maximum(x, 0))


def test_and_gates_per_relu():
    assert circuits.and_gates(32) == 125 and circuits.ciphertexts(32) == 218 and relu.table_words(1) * 8 == 3488
    assert circuits.and_gates(64) == 189 and circuits.and_gates(16) == 93
    assert relu.client_input_count(32) == 95


@pytest.mark.parametrize("bits", [8, 32, 64])
def test_garbled_relu_decodes_to_the_plaintext_circuit(bits):
    """Garble under OT-style client labels, evaluate, decode: the same z, bit for bit, as the cleartext circuit."""
    x = edge_values(bits)
    s, r, mask = shares_and_masks(x)
    delta = labels.random_delta()
    client_zero = labels.random_labels((relu.client_input_count(bits), x.size, 2))
    layer, tables = relu.garble(client_zero, delta, bits)
    assert tables.size == relu.table_words(x.size, bits)
    choices = relu.client_bits(r, mask, bits)
    colors = relu.evaluate(tables, layer.encode(s), labels.select(client_zero, choices, delta), choices, mask)
    z = layer.decode_output(colors)
    assert np.array_equal(z, plain_relu(s, r, mask, bits))
    assert np.array_equal((z + mask).view(np.int64), np.maximum(x, 0))


def test_outside_the_domain_the_sign_is_read_mod_2k():
    """|x| >= 2^(k-1) is read modulo 2^k (the range rule the launcher checks): 2^31 reads as -2^31 -> 0."""
    x = np.array([2**31, -(2**31) - 1, 2**40 + 5], dtype=np.int64)
    s, r, mask = shares_and_masks(x)
    got = (plain_relu(s, r, mask, 32) + mask).view(np.int64)
    assert list(got) == [0, 2**31 - 1, 5]


def test_garbling_is_fresh_every_time():
    """Two garblings of the same layer share no table word and no label (fresh Delta and labels)."""
    client_zero = labels.random_labels((relu.client_input_count(32), 50, 2))
    (first, t1), (second, t2) = (relu.garble(client_zero, labels.random_delta()) for _ in range(2))
    assert not np.intersect1d(t1, t2).size
    assert not np.array_equal(first.delta, second.delta)
    assert not np.intersect1d(first.server_zero, second.server_zero).size


def test_base_ot_gives_the_receiver_only_its_chosen_key():
    sender = base_ot.Sender()
    choices = [0, 1] * 8
    keys, answer = base_ot.receive(sender.message, choices)
    pairs = sender.keys(answer)
    for key, bit, pair in zip(keys, choices, pairs):
        assert key == pair[bit] and key != pair[1 - bit] and len(key) == base_ot.KEY_BYTES
    assert len({k for pair in pairs for k in pair}) == 2 * len(choices)
    for r0, r1 in answer:  # both public keys are points of the prime-order subgroup (x25519 accepts them)
        assert len(r0) == len(r1) == base_ot.POINT_BYTES and r0 != r1


def test_transpose_matches_bit_by_bit():
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 256, (128, 48), dtype=np.uint8)
    rows = iknp.transpose(matrix)
    bits = np.unpackbits(matrix, axis=1, bitorder="little")  # (128, 384): bit j of OT i is bits[j, i]
    row_bits = np.unpackbits(rows.view(np.uint8), axis=1, bitorder="little")  # (384, 128)
    assert np.array_equal(row_bits, bits.T)


@pytest.fixture(scope="module")
def ot_pair():
    receiver, sender = iknp.Receiver(), iknp.Sender()
    receiver.setup(sender.setup_answer(receiver.base.message))
    return receiver, sender


@pytest.mark.parametrize("count", [1, 127, 128, 1000])
def test_iknp_gives_the_label_of_each_choice(ot_pair, count):
    receiver, sender = ot_pair
    choices = np.random.default_rng(count).integers(0, 2, count).astype(np.uint8)
    delta = labels.random_delta()
    u, pending = receiver.extend(choices)
    assert u.nbytes == 16 * iknp.padded(count)  # 16 B per OT, receiver -> sender
    zero, y = sender.extend(u, count, delta)
    assert y.nbytes == 16 * iknp.padded(count)  # 16 B per OT, sender -> receiver
    got = pending.labels(y)
    assert np.array_equal(got, labels.select(zero, choices, delta))
    assert np.array_equal(labels.color(zero ^ delta), labels.color(zero) ^ 1)


def test_iknp_per_ot_deltas_and_fresh_extensions(ot_pair):
    receiver, sender = ot_pair
    choices = np.ones(300, np.uint8)
    deltas = np.concatenate([np.tile(labels.random_delta(), (100, 1)), np.tile(labels.random_delta(), (200, 1))])
    runs = []
    for _ in range(2):
        u, pending = receiver.extend(choices)
        zero, y = sender.extend(u, 300, deltas)
        assert np.array_equal(pending.labels(y), zero ^ deltas)
        runs.append((u, zero))
    assert not np.array_equal(runs[0][0], runs[1][0]) and not np.intersect1d(runs[0][1], runs[1][1]).size


def test_the_senders_view_of_the_extension_is_independent_of_the_choices(ot_pair):
    """U = T ^ G(k1) ^ r: for all-zero and all-one choices its bits are balanced and the two differ everywhere
    the sender cannot predict (a choice sent in the clear would show up as a constant column)."""
    receiver, _ = ot_pair
    for bit in (0, 1):
        u, _ = receiver.extend(np.full(4096, bit, np.uint8))
        ones = np.unpackbits(u).mean()
        assert 0.48 < ones < 0.52
