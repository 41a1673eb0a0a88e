"""Record a real `pibench bench` run (record_party.py as every party's command prefix), and the attacks every
protocol faces on a recorded view: the client's on the server's weights, the server's on the client's logits
and input. tests/test_adversary.py and tests/test_adversary_gc.py use them (and say what each attack is).
"""

import sys
from pathlib import Path

import torch

from pibench.bench import BenchOptions, bench_models
from pibench.modelfolder.spec import server_model
from pibench.mpc.backend import PRODUCT_WEIGHTS
from pibench.mpc.parties.launch import SessionConfig

SCALE = 2**16  # CrypTen's fixed point; a weight guess counts as recovered within one unit of it
RECORDER = Path(__file__).parent / "record_party.py"
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


def max_input_correlation(server_view: dict, x: torch.Tensor) -> float:
    flat = x.reshape(-1).double()
    corrs = [abs(float(torch.corrcoef(torch.stack([t.double(), flat]))[0, 1]))
             for t in ring_tensors(server_view["seen"]) if t.numel() == flat.numel()]
    return max(corrs, default=0.0)
