"""The attacks on crypten:fss's masks and keys (tests/test_adversary.py says when each must fail and how the
positive controls make it succeed): the server's on masks used twice, across inferences or across the ReLU
layers of one inference, and either party's on the other's DCF keys through a root seed in its transcript.
"""

import dataclasses
import itertools

import numpy as np
import torch

from pibench.modelfolder.spec import server_model
from pibench.mpc.backend import TorchBackend, run_program
from pibench.mpc.fss import dcf
from pibench.mpc.fss.relu import ReluKey

from adversary.attacks import SCALE, ring_tensors


class _ReluInputs(TorchBackend):
    """The plaintext program, keeping what enters each ReLU gate call (flat, in order)."""

    def __init__(self, program):
        super().__init__(program)
        self.inputs = []

    def relu(self, x):
        self.inputs.append(x.reshape(-1))
        return super().relu(x)


def relu_inputs(model: str, client_view: dict) -> list[list[torch.Tensor]]:
    """For each inference, in the order inferred, what enters each ReLU gate (ring units): the truth that the
    attacks below compare with, computed in plaintext from the client's recorded input and the server's program."""
    program = server_model(model).program
    out = []
    for x in client_view["input"]:
        backend = _ReluInputs(program)
        with torch.no_grad():
            run_program(program, backend, x.float() / SCALE)
        out.append([(t * SCALE).round().long() for t in backend.inputs])
    return out


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    """The fraction of elements of two ring tensors within 0.01 of each other."""
    return float(((a - b).abs() < SCALE // 100).double().mean())


def activation_difference_found(model: str, server_view: dict, client_view: dict) -> float:
    """The server's attack on reused FSS masks: opened x + r of the first ReLU layer, from two inferences, differ
    by x_i - x_j, the difference of the client's activations (which, with its own weights, gives away the
    difference of the inputs). The largest fraction of elements any pair of openings gets within 0.01 of it."""
    activations = [inputs[0] for inputs in relu_inputs(model, client_view)]
    n = activations[0].numel()
    openings = [t for t in ring_tensors(server_view["seen"]) if t.numel() == n]
    best = 0.0
    for i, j in itertools.combinations(range(len(activations)), 2):
        truth = activations[i] - activations[j]
        for a, b in itertools.permutations(range(len(openings)), 2):
            best = max(best, _close(openings[a] - openings[b], truth))
    return best


def layer_difference_found(model: str, server_view: dict, client_view: dict) -> float:
    """The server's attack on an FSS mask reused across the ReLU layers of one inference: the openings x_a + r
    and x_b + r[:n] of two layers (layer b of n values, no larger than a) differ by x_a[:n] - x_b, a difference
    of the client's activations. The largest fraction of elements any pair of openings gets within 0.01 of
    it, over every pair of layers of every inference."""
    seen = ring_tensors(server_view["seen"])
    best = 0.0
    for inputs in relu_inputs(model, client_view):
        for xa, xb in itertools.permutations(inputs, 2):
            n = xb.numel()
            if xa.numel() < n:
                continue
            truth = xa[:n] - xb
            for a in (t for t in seen if t.numel() == xa.numel()):
                for b in (t for t in seen if t.numel() == n and t is not a):
                    best = max(best, _close(a[:n] - b, truth))
    return best


def relu_keys(view: dict) -> list[ReluKey]:
    """The FSS ReLU keys the party took (crypten:fss), parsed from their recorded words as it parses them."""
    return [ReluKey.from_words(g["key"].numpy(), g["count"], g["bits"]) for g in view["fss"]]


def fss_openings(view: dict) -> list[np.ndarray]:
    """The opened x + r (uint64) of each ReLU layer the party took a key for: the first tensor of the layer's
    size that it received after taking the key."""
    return [next(t.reshape(-1).numpy().view(np.uint64) for t in view["seen"][gate["seen"]:]
                 if isinstance(t, torch.Tensor) and t.numel() == gate["count"]) for gate in view["fss"]]


SEED_BITS = ~np.uint64(3)  # the low two bits of a root seed's first word may carry control bits


def root_seeds_found(view: dict, other: dict) -> np.ndarray:
    """For each DCF root seed of the other party (its ReLU keys in order), whether this party's transcript holds
    it (up to its control bits) anywhere, at any byte alignment. The root seed is the one part of a key that
    the two parties' keys do not share (both hold the same correction words): one found completes the
    other's key, and the other's key itself would be found this way too."""
    seeds = np.concatenate([key.dcf.seed for key in relu_keys(other)]) & np.array([SEED_BITS, ~np.uint64(0)])
    blob = b"".join(t.contiguous().numpy().tobytes() if isinstance(t, torch.Tensor) else t for t in view["seen"])
    order = np.argsort(seeds[:, 0])  # random 126-bit seeds: their first words differ
    firsts, seconds = seeds[order, 0], seeds[order, 1]
    low = np.uint64((1 << 20) - 1)
    maybe = np.zeros(1 << 20, dtype=bool)  # the low 20 bits of the first words: a quick filter before the search
    maybe[firsts & low] = True
    found = np.zeros(len(seeds), dtype=bool)
    for offset in range(8):
        words = np.frombuffer(blob, dtype=np.uint64, count=(len(blob) - offset) // 8, offset=offset)
        first = words[:-1] & SEED_BITS
        i = np.flatnonzero(maybe[first & low])
        at = np.searchsorted(firsts, first[i]).clip(max=len(firsts) - 1)
        hit = (firsts[at] == first[i]) & (seconds[at] == words[i + 1])
        found[order[at[hit]]] = True
    return found


def _opened(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What two DCF output shares open to, one row per comparison: XOR for shares of bits (uint8), the sum for
    additive shares of ring words."""
    out = a ^ b if a.dtype == np.uint8 else a + b
    return out.reshape(len(out), -1)


def comparison_points(party: int, mine: dcf.DcfKey, theirs: dcf.DcfKey) -> np.ndarray:
    """The alpha (uint64) of each DCF key pair, `mine` evaluated as `party` and `theirs` as the other: a true pair
    opens to one value below alpha and another from alpha on, so a binary search over the n-bit inputs (n pair
    evaluations) finds it. For keys that are not a pair the result means nothing."""

    def opened(x):
        return _opened(dcf.evaluate(party, mine, x), dcf.evaluate(1 - party, theirs, x))

    lo, hi = np.zeros(mine.count, dtype=np.uint64), np.full(mine.count, np.uint64((1 << mine.n_bits) - 1))
    above = opened(hi)  # alpha < 2^n: the top input lies at or above it
    for _ in range(mine.n_bits):  # the smallest x that opens like the top
        mid = lo + (hi - lo) // np.uint64(2)
        at_or_above = (opened(mid) == above).all(axis=1)
        hi, lo = np.where(at_or_above, mid, hi), np.where(at_or_above, lo, mid + np.uint64(1))
    return hi


def alpha_guesses(view: dict, other: dict, party: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """A party's attack on the other's FSS keys: complete the other's DCF key from its own (the correction
    words) and those of the other's root seeds its transcript holds, and find the pair's comparison point
    alpha = r mod 2^(k-1): the low k-1 bits of the mask r, and with x + r opened, those of the activation x
    (all of x while |x| < 2^(k-2)). Per ReLU layer: (which ReLUs it could try, its guesses of alpha)."""
    found = root_seeds_found(view, other)
    out, start = [], 0
    for key, theirs in zip(relu_keys(view), relu_keys(other), strict=True):
        tried = found[start:start + key.count]
        start += key.count
        guess = np.zeros(key.count, dtype=np.uint64)
        if tried.any():
            completed = dataclasses.replace(key.dcf, seed=np.where(tried[:, None], theirs.dcf.seed, key.dcf.seed))
            guess[tried] = comparison_points(party, key.dcf, completed)[tried]
        out.append((tried, guess))
    return out


def alphas_right(guesses: list[tuple[np.ndarray, np.ndarray]], view: dict, other: dict) -> float:
    """The fraction of the ReLUs whose alpha = (r_0 + r_1) mod 2^(k-1) the party tried and got right."""
    right = []
    for (tried, guess), key, mine, theirs in zip(guesses, relu_keys(view), view["fss"], other["fss"], strict=True):
        alpha = (mine["r"] + theirs["r"]).numpy().view(np.uint64) & np.uint64((1 << key.dcf.n_bits) - 1)
        right.append(tried & (guess == alpha))
    return float(np.concatenate(right).mean())


def activations_learned(model: str, client: dict, guesses: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """The client's pre-activations (x + r) - alpha mod 2^(k-1), from its guesses of alpha: the fraction that
    match the plaintext program's (within 0.01) over every ReLU of every inference."""
    truth = [x for inputs in relu_inputs(model, client) for x in inputs]
    assert [t.numel() for t in truth] == [gate["count"] for gate in client["fss"]]
    close = []
    for (tried, guess), x_hat, x, key in zip(guesses, fss_openings(client), truth, relu_keys(client),
                                                strict=True):
        domain = np.uint64((1 << key.dcf.n_bits) - 1)
        error = (x_hat - guess - x.numpy().view(np.uint64)) & domain
        close.append(tried & ((error < SCALE // 100) | (error > domain - np.uint64(SCALE // 100))))
    return float(np.concatenate(close).mean())
