"""Play the curious client: from everything its process saw and drew, try to recover the server's weights.

Under `crypten:tfp` the client generates every Beaver triple, so b is its own and the
opened delta = W - b gives W exactly: the leak the INSECURE label warns about. Under
`crypten:dealer` the client sees D = W - B (B from the server's key stream, never
drawn by the client), E = x - A and its dealer shares; the same attack, and every
sum or difference of a seen and a drawn tensor of W's shape, recovers nothing.
"""

import sys
from pathlib import Path

import pytest
import torch

from pibench.bench import BenchOptions, bench_models
from pibench.mpc.launch import SessionConfig
from pibench.mpc.party import server_model
from pibench.mpc.program import compile_model

SCALE = 2**16
MODEL = "drd_c100_7k"  # registry model: the server's weights are seeded, so the test knows them
RECORDER = Path(__file__).parent / "adversary" / "record_client.py"


def client_view(tmp_path: Path, protocol: str) -> dict[str, list[torch.Tensor]]:
    transcript = tmp_path / f"{protocol}.pt"
    session = SessionConfig(prefixes={"client": [sys.executable, str(RECORDER), str(transcript)]})
    (result,) = bench_models([MODEL], BenchOptions(repeats=1, samples=1, protocol=protocol, session=session))
    assert result.error == "", result.error
    return torch.load(transcript)


def best_guesses(view: dict[str, list[torch.Tensor]], weight: torch.Tensor) -> tuple[float, torch.Tensor | None]:
    """The candidate (seen, seen + drawn, seen - drawn) most correlated with the weight, decoded."""
    seen = [t for t in view["seen"] if t.dtype == torch.long and t.shape == weight.shape]
    drawn = [t for t in view["drawn"] if t.dtype == torch.long and t.shape == weight.shape]
    candidates = seen + [s + r for s in seen for r in drawn] + [s - r for s in seen for r in drawn]
    best, guess = 0.0, None
    for c in candidates:
        decoded = c.double() / SCALE
        corr = abs(float(torch.corrcoef(torch.stack([decoded.flatten(), weight.double().flatten()]))[0, 1]))
        if corr > best:
            best, guess = corr, decoded
    return best, guess


def server_weights(min_size: int) -> list[tuple[str, torch.Tensor]]:
    _, model = server_model(MODEL)
    return [(op.layer, op.weights["weight"]) for op in compile_model(model).ops
            if op.kind == "conv" and op.weights["weight"].numel() >= min_size]


@pytest.fixture(scope="module")
def weights():
    found = server_weights(4096)  # big enough that chance correlations stay far below 0.05
    assert len(found) >= 4
    return found


def test_tfp_client_recovers_the_server_weights(tmp_path, weights):
    view = client_view(tmp_path, "crypten:tfp")
    for layer, w in weights:
        corr, guess = best_guesses(view, w)
        assert corr > 0.9999, layer
        assert torch.allclose(guess, w.double(), atol=2 / SCALE), layer  # exact up to fixed-point encoding


def test_dealer_client_recovers_nothing(tmp_path, weights):
    view = client_view(tmp_path, "crypten:dealer")
    assert any(t.shape == weights[0][1].shape for t in view["seen"])  # D = W - B did reach the client
    for layer, w in weights:
        corr, _ = best_guesses(view, w)
        assert corr < 0.05, layer
