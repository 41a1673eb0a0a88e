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
    memory {reset}       reset the dealer's peak resident set (a model starts), or answer it (the model ended)
    bye                  end of the session

Answer to run/live: the client's c0 shares (and FSS keys) as flat int64 tensors, in
pieces of whole tuples (at least PIECE_WORDS words, or the rest); if the tuples include
FSS ReLU keys (protocol crypten:fss), the server receives its keys the same way: each
party receives only its own key. A piece leaves as soon as it is made, and gloo's
thread sends it while the dealer makes the next, so the dealer's sending overlaps its
generation and the parties parse one piece while the next is on the wire.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pibench.errors import PibenchError
from pibench.mpc.crypten.keys import agree_key
from pibench.mpc.crypten.preprocessing import (Plan, PreprocessingError, Prg, Request, dealt_to_server,
                                               party_draws)
from pibench.mpc.parties.memory import answer_memory
from pibench.mpc.fss import relu as relu_gate
from pibench.mpc.parties.channel import isend_tensor, recv_json, recv_tensor, send_json
from pibench.mpc.protocols import CLIENT, DEALER, SERVER

log = logging.getLogger(__name__)
ROLE_NAMES = {CLIENT: "client", SERVER: "server"}
PIECE_WORDS = 1 << 20  # 8 MiB: tuples go out in pieces of at least this many words (the last may be shorter)
IN_FLIGHT = 4  # pieces sent but not yet delivered, per party: bounds the dealer's memory


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


class KeyBuffers:
    """Buffers for FSS keys, reused from one run of a plan to the next: a plan's ReLU layers ask for the same
    sizes every inference, and making a key in memory already mapped saves its pages' faults (~0.1 s per
    resnet18 inference on a busy machine here). A buffer is handed out once per run; `release` (after every
    piece of the run was delivered) keeps the run's buffers for the next and drops any it did not use, so
    the dealer holds at most one inference's keys of both parties between runs."""

    def __init__(self) -> None:
        self.free: dict[tuple[int, int], list[np.ndarray]] = {}
        self.used: list[tuple[tuple[int, int], np.ndarray]] = []

    def take(self, shape: tuple[int, int]) -> np.ndarray:
        free = self.free.get(shape)
        buffer = free.pop() if free else np.empty(shape, np.int64)
        self.used.append((shape, buffer))
        return buffer

    def release(self) -> None:
        self.free = {}
        for shape, buffer in self.used:
            self.free.setdefault(shape, []).append(buffer)
        self.used = []


KEY_BUFFERS = KeyBuffers()  # the dealer's (one per process: one dealer serves one session)


def relu_keys(request: Request, prgs: list[Prg]) -> tuple[torch.Tensor, torch.Tensor]:
    """Both parties' FSS ReLU keys (int64 words) for the mask r = r_client + r_server drawn from their streams."""
    (r0,), (r1,) = party_draws(request, prgs[CLIENT], CLIENT), party_draws(request, prgs[SERVER], SERVER)
    count, bits = request.sizes[0][0], request.relu_bits
    out = KEY_BUFFERS.take((2, relu_gate.ReluKey.words(count, bits)))
    client_words, server_words = relu_gate.keygen_words((r0 + r1).numpy().view(np.uint64), bits, out)
    return torch.from_numpy(client_words), torch.from_numpy(server_words)


def deal(requests: list[Request], prgs: list[Prg], masks: list[torch.Tensor]
         ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """What the dealer sends for each tuple, made one at a time: the client's part and the server's (an FSS
    key; None for the other kinds)."""
    for request in requests:
        if dealt_to_server(request):
            yield relu_keys(request, prgs)
        else:
            yield client_share(request, prgs, masks).reshape(-1), None


class Outbox:
    """One party's dealt parts on their way: grouped into pieces of whole tuples, each sent without waiting."""

    def __init__(self, dst: int, group: Any) -> None:
        self.dst = dst
        self.group = group
        self.parts: list[torch.Tensor] = []
        self.words = 0
        self.pending: deque[list[Any]] = deque()

    def add(self, part: torch.Tensor) -> None:
        if part.numel() == 0:  # the party takes empty tuples without a message
            return
        self.parts.append(part)
        self.words += part.numel()
        if self.words >= PIECE_WORDS:
            self._send()

    def _send(self) -> None:
        piece = torch.cat(self.parts) if len(self.parts) > 1 else self.parts[0]
        self.pending.append(isend_tensor(piece, self.dst, self.group)[0])
        self.parts, self.words = [], 0
        while len(self.pending) > IN_FLIGHT:
            self._wait()

    def _wait(self) -> None:
        for work in self.pending.popleft():
            work.wait()

    def close(self) -> None:
        """Send the rest and wait until every piece is delivered."""
        if self.parts:
            self._send()
        while self.pending:
            self._wait()


def start_session(group: Any) -> None:
    """What every dealer does first: crypten.init() in each party starts CrypTen's own TTP client, which
    waits for a generator seed and a barrier (pibench's providers never draw from that generator)."""
    for rank in (CLIENT, SERVER):
        dist.send(torch.tensor(secrets.randbits(63)), rank, group=group)
    dist.barrier(group=group)


class SessionFailed(PibenchError, RuntimeError):
    """The client ended a session that failed (its own error is in its log): the dealer exits with status 2."""


def session_over(msg: dict[str, Any]) -> bool:
    """Whether the client's message ends the dealer's session; a bye from a failed session raises SessionFailed,
    so that every party of a failed session exits with an error."""
    if msg["kind"] != "bye":
        return False
    if msg.get("failed"):
        raise SessionFailed(f"the session failed at the client ({msg['failed']}; the client's log says why)")
    log.info("dealer: session over")
    return True


def serve_dealer(group: Any) -> None:
    """The dealer's loop: agree a fresh key stream with each party (X25519), then answer the client until bye.

    Raises RuntimeError when the client's bye says its session failed, so that every party of a
    failed session exits with an error.
    """
    start_session(group)
    prgs = [Prg(agree_key(rank, group, rank, first=True)) for rank in (CLIENT, SERVER)]
    masks: list[torch.Tensor] = []
    plans: list[list[Request]] = []
    while True:
        msg, _ = recv_json(CLIENT, group)
        kind = msg["kind"]
        if session_over(msg):
            return
        if answer_memory(msg, group):
            continue
        if kind == "masks":
            masks = weight_masks(prgs[SERVER], [tuple(shape) for shape in msg["shapes"]])
            log.info("dealer: %d weight masks drawn", len(masks))
        elif kind == "plan":
            plans.append([Request.from_json(r) for r in msg["requests"]])
            log.info("dealer: plan %d registered (%d tuples)", len(plans) - 1, len(plans[-1]))
        elif kind in ("run", "live"):
            requests = plans[msg["id"]] if kind == "run" else [Request.from_json(r) for r in msg["requests"]]
            to_client, to_server = Outbox(CLIENT, group), Outbox(SERVER, group)
            for client_part, server_part in deal(requests, prgs, masks):
                to_client.add(client_part)
                if server_part is not None:
                    to_server.add(server_part)
            to_client.close()
            to_server.close()
            KEY_BUFFERS.release()  # every piece delivered: the keys' buffers serve the next run
        else:
            raise ValueError(f"dealer: unknown message {kind!r} from the client")


def take_dealt(piece: torch.Tensor, dealt: list[tuple[Request, list[torch.Tensor]]], i: int, rank: int) -> int:
    """Append to the shares of dealt[i:] their parts in one piece from the dealer (the client gets a part of
    every tuple, the server its FSS keys, parsed here, offline); returns the index of the next tuple. A piece
    that does not end at a tuple boundary of the plan (a truncated key, or another plan) raises
    PreprocessingError."""
    start = 0
    while i < len(dealt):
        request, mine = dealt[i]
        size = request.output_size()
        n = math.prod(size)
        if start + n > piece.numel():
            break
        part = piece[start:start + n].reshape(size)
        if request.kind == "relu":
            part = relu_gate.ReluKey.from_words(part.numpy(), request.sizes[0][0], request.relu_bits)
        mine.append(part)
        start += n
        i += 1
    if start != piece.numel():
        where = (f"ends inside tuple #{i} ({dealt[i][0].kind}, {math.prod(dealt[i][0].output_size())} words)"
                 if i < len(dealt) else "goes past the plan's last tuple")
        raise PreprocessingError(f"{ROLE_NAMES[rank]}: the dealer sent a piece of {piece.numel()} words that "
                                 f"{where}: a truncated key or tuple, or another plan")
    return i


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
        dealt = [(r, mine) for r, mine in zip(plan.requests, shares) if self.rank == CLIENT or dealt_to_server(r)]
        i = take_dealt(torch.zeros(0, dtype=torch.long), dealt, 0, self.rank)  # empty tuples come without a piece
        while i < len(dealt):
            piece, nbytes = recv_tensor(DEALER, self.group)
            self.bytes += nbytes
            i = take_dealt(piece, dealt, i, self.rank)
        return shares

    def close(self, failed: str = "") -> None:
        """End the dealer's session; `failed` (the client's error type, never its message, which may name
        paths) makes the dealer exit with an error too."""
        if self.rank == CLIENT:
            self._send({"kind": "bye", "failed": failed})
