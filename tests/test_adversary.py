"""Play the adversary: record everything each party's process sees on the real `pibench bench` path,
then try to recover the other side's secret from it.

- The curious **client** tries every weight of the server (every op, every size): each
  tensor it received alone, plus or minus every ring tensor it drew, and plus or minus
  every key-stream block it can compute from its view (the server's share of a weights-
  fixed mask, A1 = x - E - A0, from its own input x, the opened E and its share A0).
- The curious **server** looks for the client's logits (exact ring values) in everything
  it received or holds after the run, and for anything correlated with the client's
  input, which comes from a seed the server is not given.
- Nobody's transcript may contain a key-stream key (they are agreed by X25519).
- Under `crypten:fss` the server also compares its openings x + r across inferences: with
  a mask used twice their difference is that of the client's activations.

The dealer protocols run it all: `crypten:dealer`, and `crypten:fss`, where each party
also receives its own FSS keys and the server sees x + r at every ReLU.

Each attack is shown to work where it should (positive controls): under `crypten:tfp`
the client recovers the weights (the INSECURE label), and with an injected bug (the
reduce-based reveal, a key stream restarting at 0, keys sent in the clear, FSS masks
reused; see tests/adversary/record_party.py) the matching attack succeeds.
"""

import itertools
import sys
from pathlib import Path

import pytest
import torch

from pibench.bench import BenchOptions, bench_models
from pibench.model_spec import server_model
from pibench.mpc.backend import PRODUCT_WEIGHTS, TorchBackend, run_program
from pibench.mpc.parties.launch import SessionConfig

SCALE = 2**16  # CrypTen's fixed point; a weight guess counts as recovered within one unit of it
SPU_SCALE = 2**18  # SPU's FM64 runtime with 18 fractional bits
RECORDER = Path(__file__).parent / "adversary" / "record_party.py"
INPUT_SEED = 8642  # the client's random inputs; the launcher never sends the seed to the server
ROLES = ("client", "server", "dealer")


def record(tmp_path: Path, protocol: str, model: str, *, batch: int = 1, samples: int = 0, inject: str = "none"):
    """One `pibench bench` run with every party recorded; (result, {role: transcript}). The client infers
    `samples` inputs (default: one batch), then the first batch once more, timed."""
    prefixes = {role: [sys.executable, str(RECORDER), str(tmp_path / f"{role}.pt"), inject] for role in ROLES}
    options = BenchOptions(repeats=1, samples=samples or batch, batch=batch, protocol=protocol, seed=INPUT_SEED,
                           session=SessionConfig(prefixes=prefixes))
    (result,) = bench_models([model], options)
    assert result.error == "", result.error
    views = {role: torch.load(tmp_path / f"{role}.pt") for role in ROLES if (tmp_path / f"{role}.pt").exists()}
    return result, views


def weights(model: str, products_only: bool = False, scale: int = SCALE) -> list[tuple[str, torch.Tensor]]:
    """Every weight tensor of the server's compiled program, encoded in ring units."""
    return [(f"{op.layer}.{name}", (w.float() * scale).long())  # as CrypTen's FixedPointEncoder encodes
            for op in server_model(model).program.ops for name, w in op.weights.items()
            if w is not None and (not products_only or (op.kind, name) in PRODUCT_WEIGHTS)]


def ring_tensors(values: list) -> list[torch.Tensor]:
    return [t.reshape(-1) for t in values if isinstance(t, torch.Tensor) and t.dtype == torch.long]


def derived_masks(view: dict) -> list[torch.Tensor]:
    """Key-stream blocks of the server that the client can compute: A1 = x - E - A0 for its input x."""
    seen, drawn = view["seen"], view["drawn"]
    out = []
    for x in view["input"]:
        opened = [t for t in seen if t.dtype == torch.long and t.shape == x.shape]
        mine = [t for t in drawn if t.dtype == torch.long and t.shape == x.shape]
        out += [(x - e - a0).reshape(-1) for e in opened for a0 in mine]
    return out


def recovered_fraction(view: dict, w: torch.Tensor) -> float:
    """The largest fraction of w's elements that any guess from the client's view gets right."""
    n = w.numel()
    target = w.reshape(-1)
    guesses = [t for t in ring_tensors(view["seen"]) if t.numel() == n]
    masks = [m[:n] for m in ring_tensors(view["drawn"]) + derived_masks(view) if m.numel() >= n]
    best = 0.0
    for s in guesses:
        for guess in [s] + [s + m for m in masks] + [s - m for m in masks]:
            best = max(best, float(((guess - target).abs() <= 1).double().mean()))
    return best


def received_values(view: dict) -> torch.Tensor:
    """Every int64 the party received or holds after a collective, at every byte alignment for raw bytes.

    One-element tensors are left out: they are message-length headers and seeds, whose
    values could fall next to a logit by chance; a leaked share of the output is a buffer.
    """
    parts = [t for t in ring_tensors(view["seen"]) if t.numel() > 1]
    for data in (t for t in view["seen"] if isinstance(t, bytes)):
        for offset in range(8):
            usable = (len(data) - offset) // 8 * 8
            if usable:
                parts.append(torch.frombuffer(bytearray(data[offset:offset + usable]), dtype=torch.long))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def near(targets: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """For each target, whether some value lies within one ring unit of it."""
    values = values.unique()  # sorted
    if not len(values):
        return torch.zeros(targets.shape, dtype=torch.bool)
    at = torch.searchsorted(values, targets).clamp(max=len(values) - 1)
    below = (at - 1).clamp(min=0)
    return ((values[at] - targets).abs() <= 1) | ((values[below] - targets).abs() <= 1)


def logits_found(server_view: dict, client_view: dict) -> int:
    """How many of the client's revealed logits (ring values) appear in what the server saw or holds."""
    logits = torch.cat([t.reshape(-1) for t in client_view["revealed"]])
    logits = logits[logits.abs() > 16].unique()  # tiny values could match by chance
    return int(near(logits, received_values(server_view)).sum())


def key_windows(views: dict) -> list[str]:
    """Which parties received some key-stream key of any party, anywhere in their transcript."""
    keys = {k for view in views.values() for k in view["keys"]}
    assert keys or all(not v["keys"] for v in views.values())
    leaks = []
    for role, view in views.items():
        blob = b"".join(t.contiguous().numpy().tobytes() if isinstance(t, torch.Tensor) else t for t in view["seen"])
        leaks += [role for key in keys if key in blob]
    return leaks


class _FirstRelu(TorchBackend):
    """The plaintext program, keeping what enters its first ReLU layer."""

    def __init__(self, program):
        super().__init__(program)
        self.first = None

    def relu(self, x):
        if self.first is None:
            self.first = x.reshape(-1)
        return super().relu(x)


def activation_difference_found(model: str, server_view: dict, client_view: dict) -> float:
    """The server's attack on reused FSS masks: opened x + r of the first ReLU layer, from two inferences, differ
    by x_i - x_j, the difference of the client's activations (which, with its own weights, gives away the
    difference of the inputs). The largest fraction of elements any pair of openings gets within 0.01 of it."""
    program = server_model(model).program
    activations = []
    for x in client_view["input"]:  # the inputs in the order they were inferred
        backend = _FirstRelu(program)
        with torch.no_grad():
            run_program(program, backend, x.float() / SCALE)
        activations.append((backend.first * SCALE).round().long())
    n = activations[0].numel()
    openings = [t for t in ring_tensors(server_view["seen"]) if t.numel() == n]
    best = 0.0
    for i, j in itertools.combinations(range(len(activations)), 2):
        truth = activations[i] - activations[j]
        for a, b in itertools.permutations(range(len(openings)), 2):
            found = ((openings[a] - openings[b] - truth).abs() < SCALE // 100).double().mean()
            best = max(best, float(found))
    return best


def max_input_correlation(server_view: dict, x: torch.Tensor) -> float:
    flat = x.reshape(-1).double()
    corrs = [abs(float(torch.corrcoef(torch.stack([t.double(), flat]))[0, 1]))
             for t in ring_tensors(server_view["seen"]) if t.numel() == flat.numel()]
    return max(corrs, default=0.0)


# -- the fixed protocol ------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["crypten:dealer", "crypten:fss"])
def dealer_run(request, tmp_path_factory):
    """Both dealer protocols; under crypten:fss each party also receives its FSS keys and sees x + r."""
    return record(tmp_path_factory.mktemp(request.param.split(":")[1]), request.param, "drd_c100_7k")


def test_dealer_client_recovers_no_weight(dealer_run):
    result, views = dealer_run
    assert result.rows[0].mpc_agreement == 1.0
    client = views["client"]
    all_weights = weights("drd_c100_7k")
    assert len(all_weights) > 20 and any(w.numel() < 100 for _, w in all_weights)  # small ones too: scales, fc bias
    assert len(derived_masks(client)) > 0  # the client can compute some of the server's shares
    for layer, w in all_weights:
        assert recovered_fraction(client, w) < 0.01, layer


def test_dealer_server_sees_no_logit_and_no_input(dealer_run):
    result, views = dealer_run
    assert logits_found(views["server"], views["client"]) == 0
    assert logits_found(views["dealer"], views["client"]) == 0
    x = views["client"]["input"][0]
    # five standard deviations of a chance correlation between independent vectors of this length
    assert max_input_correlation(views["server"], x) < 5 / x.numel() ** 0.5
    if result.rows[0].protocol == "crypten:fss":  # the server opens x + r: a mask used twice shows a zero difference,
        assert len(views["client"]["input"]) == 2  # since the same input went in twice (recording, timed)
        assert activation_difference_found("drd_c100_7k", views["server"], views["client"]) < 0.01


def test_no_key_stream_key_in_any_transcript(dealer_run):
    _, views = dealer_run
    assert {len(k) for v in views.values() for k in v["keys"]} == {32}
    assert len({k for v in views.values() for k in v["keys"]}) == 2  # one stream per party, agreed with the dealer
    assert key_windows(views) == []


@pytest.mark.parametrize("protocol", ["crypten:dealer", "crypten:tfp"])
def test_server_holds_no_logit_of_a_digits_batch(tmp_path, protocol):
    _, views = record(tmp_path, protocol, "cnn_digits", batch=4)
    assert sum(t.numel() for t in views["client"]["revealed"]) >= 40
    assert logits_found(views["server"], views["client"]) == 0


# -- positive controls: each attack finds what an injected bug or an insecure mode gives away --------
def test_tfp_client_recovers_every_product_weight(tmp_path):
    _, views = record(tmp_path, "crypten:tfp", "drd_c100_7k")
    for layer, w in weights("drd_c100_7k", products_only=True):
        assert recovered_fraction(views["client"], w) > 0.99, layer
    assert logits_found(views["server"], views["client"]) == 0  # the server's side holds


def test_reduce_reveal_hands_the_server_half_the_logits(tmp_path):
    _, views = record(tmp_path, "crypten:dealer", "cnn_digits", batch=4, inject="reduce_reveal")
    found = logits_found(views["server"], views["client"])
    assert found >= 10, found  # gloo's reduce leaves the final sums of half the buffer at the server


def test_key_stream_restarting_at_zero_unmasks_the_first_conv(tmp_path):
    result, views = record(tmp_path, "crypten:dealer", "drd_c100_7k", inject="counter_reset")
    assert result.rows[0].mpc_agreement == 1.0  # the bug does not show in the results
    layer, w = weights("drd_c100_7k", products_only=True)[0]
    assert recovered_fraction(views["client"], w) == 1.0, layer


def test_reused_fss_masks_hand_the_server_the_clients_activation_differences(tmp_path):
    """crypten:fss with one mask r for every ReLU layer and inference (the DCF keys stay fresh)."""
    result, views = record(tmp_path, "crypten:fss", "drd_c100_7k", samples=2, inject="mask_reuse")
    assert result.rows[0].mpc_agreement == 1.0  # the bug does not show in the results
    assert len({tuple(x.reshape(-1).tolist()) for x in views["client"]["input"]}) == 2  # two different inputs
    assert activation_difference_found("drd_c100_7k", views["server"], views["client"]) > 0.99


def test_keys_sent_in_the_clear_are_found(tmp_path):
    _, views = record(tmp_path, "crypten:dealer", "cnn_digits", inject="key_in_clear")
    assert sorted(set(key_windows(views))) == ["client", "server"]


# -- SPU: pibench's own messages over SPU's link (SPU's protocol messages stay inside libspu) ----------
@pytest.mark.parametrize("protocol", ["spu:cheetah", "spu:semi2k"])
def test_spu_shares_reveal_no_logit_and_no_weight(tmp_path, protocol):
    pytest.importorskip("spu")
    result, views = record(tmp_path, protocol, "cnn_digits", batch=2)
    assert result.rows[0].mpc_agreement == 1.0
    assert views["client"]["revealed"] and views["server"]["seen"]
    assert logits_found(views["server"], views["client"]) == 0
    received = received_values(views["client"])  # the weight shares the server sent, at every alignment
    checked = 0
    for layer, w in weights("cnn_digits", scale=SPU_SCALE):
        w = w.reshape(-1)[w.reshape(-1).abs() > 16]  # zero biases say nothing
        checked += w.numel()
        assert w.numel() == 0 or near(w, received).double().mean() < 0.01, layer
    assert checked > 1000
