"""The dealer (rank 2): a third process that makes all correlated randomness, and the parties' link to it.

Trust: the dealer learns nothing of the inputs or weights by itself, but it knows
every tuple and mask, so dealer + server could recover the client's input and
dealer + client the server's weights. The protocol is secure against a semi-honest
client or server as long as the dealer colludes with neither.

Messages (client -> dealer, JSON; the server only receives, and only FSS keys under crypten:fss):

    masks {shapes}       once per model: draw the weight masks B from the server's stream
    plan {requests}      register a recorded plan; the dealer answers nothing, ids count up from 0
    run {id}             make one inference's tuples of a registered plan (offline phase)
    live {requests}      make these tuples now (the recording inference)
    bye                  end of the session

Answer to run/live: the client's c0 shares (and FSS keys), one flat int64 tensor; if
the tuples include FSS ReLU keys (protocol crypten:fss), the server's keys follow, sent
to the server as one flat tensor: each party receives only its own key.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pibench.mpc.crypten.keys import agree_key
from pibench.mpc.crypten.preprocessing import (Plan, PreprocessingError, Prg, Request, dealt_to_server,
                                               party_draws)
from pibench.mpc.fss import relu as relu_gate
from pibench.mpc.parties.channel import recv_json, recv_tensor, send_json, send_tensor
from pibench.mpc.protocols import CLIENT, DEALER, SERVER

log = logging.getLogger(__name__)
ROLE_NAMES = {CLIENT: "client", SERVER: "server"}


def client_share(request: Request, prgs: list[Prg], masks: list[torch.Tensor]) -> torch.Tensor:
    """The client's last share of a tuple: the correct value minus everything else (drawn as the parties do)."""
    mine = party_draws(request, prgs[CLIENT], CLIENT)
    theirs = party_draws(request, prgs[SERVER], SERVER)
    kind = request.kind
    if kind == "additive":
        return request.ring_op(mine[0] + theirs[0], mine[1] + theirs[1]) - theirs[2]
    if kind == "binary":
        return ((mine[0] ^ theirs[0]) & (mine[1] ^ theirs[1])) ^ theirs[2]
    if kind == "b2a":
        return (mine[0] ^ theirs[0]) - theirs[1]
    if kind == "fixed":
        return request.ring_op(mine[0] + theirs[0], masks[request.key]) - theirs[1]
    raise ValueError(f"unknown tuple kind {kind!r}")


def weight_masks(server_stream: Prg, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """The masks B of a model's weights, drawn from the server's key stream (by the server and the dealer).

    They come from the same stream as the server's tuple shares, further along: a mask
    that repeated a block of that stream would let the client, who can compute some of the
    server's shares, unmask the weights (the adversary tests inject exactly that).
    """
    return [server_stream.ring(shape) for shape in shapes]


def relu_keys(request: Request, prgs: list[Prg]) -> tuple[torch.Tensor, torch.Tensor]:
    """Both parties' FSS ReLU keys (int64 words) for the mask r = r_client + r_server drawn from their streams."""
    (r0,), (r1,) = party_draws(request, prgs[CLIENT], CLIENT), party_draws(request, prgs[SERVER], SERVER)
    keys = relu_gate.keygen((r0 + r1).numpy().view(np.uint64))
    return tuple(torch.from_numpy(key.to_words()) for key in keys)  # type: ignore[return-value]


def deal(requests: list[Request], prgs: list[Prg], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """What the dealer sends for these tuples: the client's flat tensor and the server's (empty without FSS)."""
    to_client, to_server = [], []
    for request in requests:
        if dealt_to_server(request):
            client_key, server_key = relu_keys(request, prgs)
            to_client.append(client_key)
            to_server.append(server_key)
        else:
            to_client.append(client_share(request, prgs, masks).reshape(-1))
    return _flat(to_client), _flat(to_server)


def _flat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def serve_dealer(group: Any) -> None:
    """The dealer's loop: agree a fresh key stream with each party (X25519), then answer the client until bye."""
    # crypten.init() in each party starts CrypTen's own TTP client, which waits for a
    # generator seed and a barrier; pibench's provider never draws from that generator.
    for rank in (CLIENT, SERVER):
        dist.send(torch.tensor(secrets.randbits(63)), rank, group=group)
    dist.barrier(group=group)
    prgs = [Prg(agree_key(rank, group, rank, first=True)) for rank in (CLIENT, SERVER)]
    masks: list[torch.Tensor] = []
    plans: list[list[Request]] = []
    while True:
        msg, _ = recv_json(CLIENT, group)
        kind = msg["kind"]
        if kind == "bye":
            log.info("dealer: session over")
            return
        if kind == "masks":
            masks = weight_masks(prgs[SERVER], [tuple(shape) for shape in msg["shapes"]])
            log.info("dealer: %d weight masks drawn", len(masks))
        elif kind == "plan":
            plans.append([Request.from_json(r) for r in msg["requests"]])
            log.info("dealer: plan %d registered (%d tuples)", len(plans) - 1, len(plans[-1]))
        elif kind in ("run", "live"):
            requests = plans[msg["id"]] if kind == "run" else [Request.from_json(r) for r in msg["requests"]]
            to_client, to_server = deal(requests, prgs, masks)
            send_tensor(to_client, CLIENT, group)
            if any(dealt_to_server(r) for r in requests):
                send_tensor(to_server, SERVER, group)
        else:
            raise ValueError(f"dealer: unknown message {kind!r} from the client")


def split_dealt(flat: torch.Tensor, plan: Plan, shares: list[list[torch.Tensor]], rank: int) -> None:
    """Append to each tuple's shares its part of the dealer's flat tensor (the client: every tuple; the
    server: its FSS keys, parsed here, offline). A tensor of the wrong length (a truncated key) raises
    PreprocessingError."""
    dealt = [(r, mine) for r, mine in zip(plan.requests, shares) if rank == CLIENT or dealt_to_server(r)]
    sizes = [request.output_size() for request, _ in dealt]
    counts = [int(torch.Size(size).numel()) for size in sizes]
    if flat.numel() != sum(counts):
        raise PreprocessingError(f"{ROLE_NAMES[rank]}: the dealer sent {flat.numel()} words for this offline "
                                 f"phase, the plan needs {sum(counts)}: a truncated key or tuple, or another plan")
    start = 0
    for (request, mine), size, n in zip(dealt, sizes, counts):
        part = flat[start:start + n].reshape(size)
        mine.append(relu_gate.ReluKey.from_words(part.numpy(), request.sizes[0][0]) if request.kind == "relu" else part)
        start += n


class DealerLink:
    """A party's side of the dealer: its key stream, and (client) the messages to the dealer.

    `make(plan)` returns this party's full share of every tuple in the plan; each party
    counts the bytes it exchanges with the dealer in `bytes` (sent + received): the
    server's are its FSS keys, none without them.
    """

    def __init__(self, rank: int, group: Any) -> None:
        self.rank = rank
        self.group = group
        self.prg = Prg(agree_key(DEALER, group, rank, first=False))
        self.bytes = 0
        self.plans = 0

    def _send(self, obj: dict[str, Any]) -> None:
        self.bytes += send_json(obj, DEALER, self.group)

    def masks(self, shapes: list[tuple[int, ...]]) -> list[torch.Tensor] | None:
        """Once per model: the server draws the weight masks B (the dealer the same); the client gets none."""
        if self.rank == CLIENT:
            self._send({"kind": "masks", "shapes": [list(s) for s in shapes]})
            return None
        return weight_masks(self.prg, [tuple(s) for s in shapes])

    def register(self, plan: Plan) -> None:
        """Give the dealer a recorded plan once, so each offline phase only names it."""
        if self.rank == CLIENT:
            self._send({"kind": "plan", "requests": [r.to_json() for r in plan.requests]})
        plan.dealer_id = self.plans
        self.plans += 1

    def make(self, plan: Plan) -> list[list[torch.Tensor]]:
        if self.rank == CLIENT:
            if plan.dealer_id >= 0:
                self._send({"kind": "run", "id": plan.dealer_id})
            else:
                self._send({"kind": "live", "requests": [r.to_json() for r in plan.requests]})
        shares = [party_draws(r, self.prg, self.rank) for r in plan.requests]
        if self.rank == CLIENT or any(dealt_to_server(r) for r in plan.requests):
            flat, nbytes = recv_tensor(DEALER, self.group)
            self.bytes += nbytes
            split_dealt(flat, plan, shares, self.rank)
        return shares

    def close(self) -> None:
        if self.rank == CLIENT:
            self._send({"kind": "bye"})
