"""crypten:gc: Delphi's online phase. Linear layers cost nothing online; every ReLU is a garbled circuit.

Shares: between layers the server holds x - r and the client r, a function of the client's
own randomness only, so the client computes all its shares of an inference offline, in
one pass of the program on its shares alone (`offline`). Then (`pibench.mpc.gc.link`):
the dealer's part of the weighted ops goes to the server, and per ReLU layer the client
gets its input labels by IKNP OT and the server's garbled tables. Online:

    input          the client sends x - r0 (8 B per input element): its only linear traffic
    weighted op    server op(S, W) + u, client rho: no message; both truncate their share
                   locally, as CrypTen does between two parties (off by one unit in the last
                   place, and wrong with probability ~|x|/2^63)
    ReLU layer     server -> client the labels of its share's k low bits (16·k B per ReLU),
                   client -> server the 64 output colors (8 B): one round trip (two rounds in
                   CrypTen's count, one per message); the server's share becomes ReLU(x) - r'
    max pooling    max(a, b) = b + ReLU(a - b) pairwise (`pibench.mpc.fss.maxpool`)
    output         the server sends its share of the logits

The comparison reads x mod 2^k (k = 32): exact for |x| < 2^(k-1) ring units, the range rule
of crypten:fss. Fresh Delta, labels, circuits and OTs for every inference.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from pibench.mpc.backend import run_program
from pibench.mpc.crypten.fss_backend import FssBackend
from pibench.mpc.crypten.preprocessing import PreprocessingError, ring_op
from pibench.mpc.crypten.weights_fixed import FixedWeight, truncate_share
from pibench.mpc.gc import iknp, labels
from pibench.mpc.gc import relu as gc_relu
from pibench.mpc.gc.link import GcLink, Inference, Product, serve_gc_dealer
from pibench.mpc.program import Program
from pibench.mpc.protocols import CLIENT, SERVER

from crypten.mpc import MPCTensor  # noqa: E402 (after the compatibility shim, via preprocessing)
from crypten.mpc.provider.provider import TupleProvider  # noqa: E402

# The protocol table's hooks for crypten:gc (pibench.mpc.protocols): the engine, the party's provider, the dealer.
serve_dealer = serve_gc_dealer


def _random_ring(shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform ring elements (int64) from a fresh AES-CTR key: the client's masks."""
    return torch.from_numpy(labels.random_labels(tuple(shape)).view(np.int64))


@dataclass
class GcPlan:
    """What the party records of the first inference at a batch size: its input shape (the rest follows)."""

    shape: tuple[int, ...] | None = None
    requests: list[Any] = field(default_factory=list)  # no tuples: the party's log counts them
    dealer_id: int = -1

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(list(self.shape or ())).encode()).hexdigest()


class GcProvider(TupleProvider):
    """The party's offline side, in the shape `Party` drives a provider: record, preprocess, finish.

    CrypTen itself must not ask it for anything: crypten:gc makes no Beaver tuples."""

    def __init__(self, link: GcLink) -> None:
        super().__init__()
        self.source = link
        self.backend: GcBackend | None = None
        self.recording: GcPlan | None = None
        self.dealt_bytes = 0  # bytes of offline material the online ops used so far (see CommMeter)

    @contextlib.contextmanager
    def record(self) -> Iterator[GcPlan]:
        self.recording = GcPlan()
        try:
            yield self.recording
        finally:
            self.recording = None

    def preprocess(self, plan: GcPlan) -> None:
        self.backend.offline(plan.shape)

    def finish_online(self) -> None:
        self.backend.finish_online()

    def held_bytes(self) -> int:
        """Bytes of the prepared inference: the client's tables, input labels and masks; the server's garbled
        layers (its labels' zero values, Delta, decode bits) and u."""
        return self.backend.prepared.nbytes() if self.backend.prepared is not None else 0

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise PreprocessingError("crypten:gc makes no Beaver tuples: an op reached CrypTen's multiplication; "
                                 "the gc backend must implement it")

    generate_additive_triple = square = generate_binary_triple = wrap_rng = B2A_rng = _refuse


def provider(rank: int, group: Any, peer_group: Any) -> GcProvider:
    """A party's provider for crypten:gc (the hook `Party` calls)."""
    return GcProvider(GcLink(rank, group, peer_group))


class GcBackend(FssBackend):
    """`CryptenBackend`'s setup (weights masked once, D opened to the client), with crypten:gc's ops."""

    def __init__(self, program: Program, rank: int, provider: GcProvider) -> None:
        super().__init__(program, rank, provider, gc_relu.DEFAULT_BITS)
        provider.backend = self
        self.link: GcLink = provider.source
        self.prepared: Inference | None = None
        self.offline_pass = False

    @classmethod
    def for_job(cls, program: Program, rank: int, provider: GcProvider, job: dict[str, Any]) -> "GcBackend":
        """k is crypten:gc's own (`gc_relu.DEFAULT_BITS`); the launcher checked that the model's range fits it."""
        return cls(program, rank, provider)

    def share_weights(self) -> None:
        super().share_weights()
        self.link.setup_ot()

    # -- offline ---------------------------------------------------------------------------
    def offline(self, shape: tuple[int, ...]) -> None:
        """Make one inference's material: the client's shares (a pass of the program), the dealer's part,
        the OTs and the garbled circuits."""
        inf = Inference(tuple(shape))
        if self.rank == CLIENT:
            self.prepared, self.offline_pass = inf, True
            try:
                run_program(self.program, self, self.share_input(None, shape))
            finally:
                self.offline_pass = False
            self.link.client_offline(inf)
            inf.products.clear()
            inf.relus.clear()
        else:
            self.link.server_offline(inf)
        self.prepared = inf

    def finish_online(self) -> None:
        left = self.prepared.left() if self.prepared is not None else 0
        self.prepared = None
        if left:
            raise PreprocessingError(f"the online phase left {left} pieces of crypten:gc's offline material "
                                     "unused; the inference differs from the one prepared")

    def _next(self, queue: str) -> Any:
        items = getattr(self.prepared, queue)
        if not items:
            raise PreprocessingError(f"crypten:gc: the online phase needs more {queue} than were prepared")
        return items.popleft()

    # -- online (and the client's offline pass) ------------------------------------------------
    def share_input(self, x: torch.Tensor | None, shape: tuple[int, ...]) -> Any:
        import crypten
        import crypten.communicator as comm

        if self.prepared is None:  # the recording inference: its offline phase now
            if self.provider.recording is None:
                raise PreprocessingError("crypten:gc: an inference outside a recorded or preprocessed one")
            self.provider.recording.shape = tuple(shape)
            self.offline(shape)
        if self.rank == SERVER:
            return MPCTensor.from_shares(comm.get().recv(torch.empty(shape, dtype=torch.long), CLIENT))
        if self.offline_pass:
            r0 = _random_ring(shape)
            self.prepared.inputs.append(r0)
            return MPCTensor.from_shares(r0)
        r0 = self._next("inputs")
        comm.get().send(crypten.encoder.FixedPointEncoder().encode(x.float()) - r0, SERVER)
        return MPCTensor.from_shares(r0)

    def _product(self, x: Any, weight: Any, op: str, kwargs: dict[str, Any]) -> Any:
        if not isinstance(weight, FixedWeight):
            raise PreprocessingError(f"crypten:gc: {op} with a weight that was not masked at setup")
        share = x._tensor.share
        if self.rank == SERVER:
            z = ring_op(op, share, weight.w, kwargs)
            z += self._next("us").reshape(z.shape)
            self.provider.dealt_bytes += 16 * z.numel()  # m1 + m2 received offline
        elif self.offline_pass:
            z = _random_ring(tuple(ring_op(op, torch.empty(share.shape, device="meta"),
                                           torch.empty(weight.d.shape, device="meta"), kwargs).shape))
            sigma = _random_ring(tuple(z.shape))
            self.prepared.products.append(Product(weight.key, op, kwargs, share.clone(),
                                                  ring_op(op, share, weight.d, kwargs) + sigma, z + sigma))
            self.prepared.rhos.append(z)
        else:
            z = self._next("rhos")
        return MPCTensor.from_shares(truncate_share(z, x._tensor.encoder.scale))

    def relu_shares(self, share: np.ndarray) -> np.ndarray:
        """One ReLU layer on this party's shares (flat uint64): the client's share becomes r', the server's
        ReLU(x) - r'. One round trip online."""
        import crypten.communicator as comm

        count, bits = share.size, self.link.bits
        if self.rank == SERVER:
            layer = self._next("layers")
            comm.get().send(torch.from_numpy(layer.encode(share).view(np.int64)), CLIENT)
            colors = comm.get().recv(torch.empty(count, dtype=torch.long), CLIENT)
            self.provider.dealt_bytes += 16 * iknp.padded(gc_relu.client_input_count(bits) * count)  # OT's U
            return layer.decode_output(colors.numpy().view(np.uint64))
        if self.offline_pass:
            mask = labels.random_labels((count,))
            self.prepared.relus.append((share.copy(), mask))
            self.prepared.masks.append(mask)
            return mask
        mask = self._next("masks")
        tables, mine, choices = self._next("layers")
        server = comm.get().recv(torch.empty(bits * count * 2, dtype=torch.long), SERVER)
        colors = gc_relu.evaluate(tables, server.numpy().view(np.uint64).reshape(bits, count, 2), mine, choices,
                                  mask)
        comm.get().send(torch.from_numpy(colors.view(np.int64)), SERVER)
        self.provider.dealt_bytes += tables.nbytes + 16 * iknp.padded(mine.shape[0] * count)
        return mask

    def reveal_to_client(self, y: Any) -> torch.Tensor | None:
        return None if self.offline_pass else super().reveal_to_client(y)
