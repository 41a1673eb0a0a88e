"""The offline messages of `crypten:gc`: the dealer's part for the linear layers, and the garbled circuits
and OTs between client and server (no dealer in the ReLU part).

Shares. Between layers the server holds x - r and the client r, where every client share
is a function of the client's own randomness only (r0 for the input, rho per weighted op,
r' per ReLU layer): the client can compute all of them before the inference, and they
reveal nothing of x or W.

A weighted op y = op(x, W) with client share r of x (server share S = x - r):

    client -> dealer   r and tau = rho + sigma (rho, sigma fresh, the shape of y)
    dealer -> server   m2 = op(r, B) - tau         (B: the weight mask, from the server's key stream)
    client -> server   m1 = op(r, D) + sigma       (D = W - B, opened to the client at setup)
    server             u = m1 + m2 = op(r, W) - rho

so online the server's share is op(S, W) + u and the client's rho, with no message: their
sum is op(x, W). Nobody learns more than before: the dealer sees r and tau, which are the
client's randomness (and it knows B, not W); the server sees m1 and m2, each masked by a
uniform value it does not know (sigma, rho); the client sees nothing new.

A ReLU layer of N (client share c, output mask r'): the client extends IKNP correlated OTs
with its k + 63 input bits per ReLU (`relu.client_bits`), the server garbles under a
fresh Delta with the OTs' zero labels and sends the tables (`pibench.mpc.gc.relu`).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pibench.mpc.crypten.dealer import session_over, start_session, weight_masks
from pibench.mpc.crypten.keys import agree_key
from pibench.mpc.crypten.preprocessing import Prg, ring_op
from pibench.mpc.gc import iknp, labels
from pibench.mpc.gc import relu as gc_relu
from pibench.mpc.parties.channel import recv_json, recv_tensor, send_json, send_tensor
from pibench.mpc.parties.memory import answer_memory
from pibench.mpc.protocols import CLIENT, DEALER, SERVER

log = logging.getLogger(__name__)


def _words(array: np.ndarray) -> torch.Tensor:
    """A numpy array (any dtype, a multiple of 8 bytes) as a flat int64 tensor for a channel."""
    array = np.ascontiguousarray(array)
    return torch.from_numpy((array if array.flags.writeable else array.copy()).reshape(-1).view(np.int64))


def _array(tensor: torch.Tensor, dtype: Any = np.uint64) -> np.ndarray:
    return tensor.numpy().view(dtype)


@dataclass
class Product:
    """The client's offline record of one weighted op: what the dealer and the server need."""

    key: int  # the weight's mask index
    op: str
    kwargs: dict[str, Any]
    r: torch.Tensor  # the client's share of the input
    m1: torch.Tensor  # op(r, D) + sigma, for the server
    tau: torch.Tensor  # rho + sigma, for the dealer


@dataclass
class Inference:
    """One inference's offline material, consumed in order by the online phase."""

    shape: tuple[int, ...]
    inputs: deque = field(default_factory=deque)  # client: r0
    rhos: deque = field(default_factory=deque)  # client: its share of each weighted op's output
    masks: deque = field(default_factory=deque)  # client: r' of each ReLU layer
    layers: deque = field(default_factory=deque)  # client: (tables, its input labels, bits); server: GarbledLayer
    us: deque = field(default_factory=deque)  # server: u of each weighted op
    products: list[Product] = field(default_factory=list)  # client, offline only
    relus: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # client, offline only: (c, r')

    def nbytes(self) -> int:
        """Bytes held of the material still to be used."""
        def size(item: Any) -> int:
            if isinstance(item, tuple):
                return sum(size(i) for i in item)
            if isinstance(item, gc_relu.GarbledLayer):
                return item.server_zero.nbytes + item.decode.nbytes + item.delta.nbytes
            return item.nbytes
        return sum(size(i) for q in (self.inputs, self.rhos, self.masks, self.layers, self.us) for i in q)

    def left(self) -> int:
        return sum(len(q) for q in (self.inputs, self.rhos, self.masks, self.layers, self.us))


class GcLink:
    """A party's offline side of crypten:gc: its messages to the dealer and to the other party.

    `bytes` counts everything this party sends and receives here (setup and offline), like
    `DealerLink.bytes`; the online messages go through CrypTen's communicator instead."""

    def __init__(self, rank: int, group: Any, peer_group: Any, bits: int = gc_relu.DEFAULT_BITS) -> None:
        self.rank = rank
        self.group = group  # with the dealer
        self.peer_group = peer_group  # with the other party
        self.bits = bits
        self.bytes = 0
        self.prg = Prg(agree_key(DEALER, group, SERVER, first=False)) if rank == SERVER else None
        self.ot: iknp.Receiver | iknp.Sender | None = None

    # -- plumbing ----------------------------------------------------------------------------
    def _send(self, tensor: torch.Tensor, dst: int, group: Any) -> None:
        self.bytes += send_tensor(tensor, dst, group)

    def _recv(self, src: int, group: Any) -> torch.Tensor:
        tensor, nbytes = recv_tensor(src, group)
        self.bytes += nbytes
        return tensor

    def _send_json(self, obj: Any, dst: int, group: Any) -> None:
        self.bytes += send_json(obj, dst, group)

    def _recv_json(self, src: int, group: Any) -> Any:
        obj, nbytes = recv_json(src, group)
        self.bytes += nbytes
        return obj

    def register(self, plan: Any) -> None:
        """Nothing to register: the dealer learns each inference's ops from the client's offline message."""

    def close(self, failed: str = "") -> None:
        """End the dealer's session; `failed` (the client's error type) makes the dealer exit with an error too."""
        if self.rank == CLIENT:
            self._send_json({"kind": "bye", "failed": failed}, DEALER, self.group)

    # -- setup ---------------------------------------------------------------------------
    def masks(self, shapes: list[tuple[int, ...]]) -> list[torch.Tensor] | None:
        """Once per model: the server and the dealer draw the weight masks B; the client gets none."""
        if self.rank == CLIENT:
            self._send_json({"kind": "masks", "shapes": [list(s) for s in shapes]}, DEALER, self.group)
            return None
        return weight_masks(self.prg, [tuple(s) for s in shapes])

    def setup_ot(self) -> None:
        """Once per model: 128 base OTs (the client sends E, the server answers), then IKNP is ready."""
        peer = 1 - self.rank
        if self.rank == CLIENT:
            self.ot = iknp.Receiver()
            self._send(_words(np.frombuffer(self.ot.base.message, np.uint8)), peer, self.peer_group)
            answer = _array(self._recv(peer, self.peer_group), np.uint8).reshape(-1, 2, 32)
            self.ot.setup([(bytes(a[0]), bytes(a[1])) for a in answer])
        else:
            self.ot = iknp.Sender()
            message = _array(self._recv(peer, self.peer_group), np.uint8).tobytes()
            answer = self.ot.setup_answer(message)
            self._send(_words(np.frombuffer(b"".join(a + b for a, b in answer), np.uint8)), peer, self.peer_group)

    # -- per inference -------------------------------------------------------------------
    def client_offline(self, inf: Inference) -> None:
        """The client's offline messages for one inference (after it computed its shares)."""
        ops = [[p.key, p.op, p.kwargs, list(p.r.shape)] for p in inf.products]
        self._send_json({"kind": "run", "ops": ops}, DEALER, self.group)
        if inf.products:
            self._send(torch.cat([p.r.reshape(-1) for p in inf.products]), DEALER, self.group)
            self._send(torch.cat([p.tau.reshape(-1) for p in inf.products]), DEALER, self.group)
        self._send_json({"products": [p.m1.numel() for p in inf.products],
                         "relus": [c.size for c, _ in inf.relus]}, SERVER, self.peer_group)
        if inf.products:
            self._send(torch.cat([p.m1.reshape(-1) for p in inf.products]), SERVER, self.peer_group)
        for c, mask in inf.relus:
            choices = gc_relu.client_bits(c, mask, self.bits)
            u, pending = self.ot.extend(choices.reshape(-1))
            self._send(_words(u), SERVER, self.peer_group)
            mine = pending.labels(_array(self._recv(SERVER, self.peer_group)).reshape(-1, 2))
            tables = _array(self._recv(SERVER, self.peer_group))
            inf.layers.append((tables, mine.reshape(choices.shape + (2,)), choices))

    def server_offline(self, inf: Inference) -> None:
        """The server's side: u for every weighted op, a garbled circuit for every ReLU layer."""
        plan = self._recv_json(CLIENT, self.peer_group)
        if plan["products"]:
            m1 = self._recv(CLIENT, self.peer_group)
            m2 = self._recv(DEALER, self.group)
            inf.us.extend((m1 + m2).split(plan["products"]))
        for count in plan["relus"]:
            u = _array(self._recv(CLIENT, self.peer_group), np.uint8)
            inputs = gc_relu.client_input_count(self.bits) * count
            delta = labels.random_delta()
            zero, y = self.ot.extend(u.reshape(-1, iknp.padded(inputs) // 8), inputs, delta)
            self._send(_words(y), CLIENT, self.peer_group)
            layer, tables = gc_relu.garble(zero.reshape(-1, count, 2), delta, self.bits)
            self._send(_words(tables), CLIENT, self.peer_group)
            inf.layers.append(layer)


def serve_gc_dealer(group: Any) -> None:
    """The dealer of crypten:gc: weight masks from the server's key stream, then op(r, B) - tau per weighted op."""
    start_session(group)
    prg = Prg(agree_key(SERVER, group, SERVER, first=True))
    masks: list[torch.Tensor] = []
    while True:
        msg, _ = recv_json(CLIENT, group)
        if session_over(msg):
            return
        if answer_memory(msg, group):
            continue
        if msg["kind"] == "masks":
            masks = weight_masks(prg, [tuple(s) for s in msg["shapes"]])
        elif msg["kind"] == "run":
            if not msg["ops"]:
                continue
            rs, _ = recv_tensor(CLIENT, group)
            taus, _ = recv_tensor(CLIENT, group)
            out, start, tau_start = [], 0, 0
            for key, op, kwargs, shape in msg["ops"]:
                r = rs[start:start + math.prod(shape)].reshape(shape)
                start += r.numel()
                y = ring_op(op, r, masks[key], {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
                out.append(y.reshape(-1) - taus[tau_start:tau_start + y.numel()])
                tau_start += y.numel()
            send_tensor(torch.cat(out), SERVER, group)
        else:
            raise ValueError(f"gc dealer: unknown message {msg['kind']!r} from the client")
