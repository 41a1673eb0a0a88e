"""Correlated randomness for the dealer protocol, made before the online phase.

Every secure multiplication, AND gate and bit conversion of an inference consumes a
tuple from the provider; which tuples, in which order and of which shapes is fixed
by the program and the batch size. So the first inference of a batch size runs
*live* (each tuple fetched from the dealer when needed) and records that sequence
(a `Request` list, the plan); every later inference first *preprocesses* the whole
plan (offline phase) and then runs the online phase from a local queue. A request
that differs from the plan's next one is a bug in the protocol, not a slow path:
it raises `PreprocessingError`.

How a tuple is split: the dealer agrees a secret key with each party (X25519,
`pibench.mpc.crypten.keys`: the key itself never travels); a party's
shares are drawn from its key stream (`Prg`), the dealer draws the same streams, and
only the client's last share (c0, the one that makes the tuple correct) travels from
the dealer to the client. The server receives nothing from the dealer after the keys.
The streams are AES-256 in counter mode, a cryptographic PRG (about ten times
faster here than SHAKE-256 through hashlib): the client sees values such as
D = W - B whose high bits are those of B, so a predictable generator (torch's
Mersenne Twister) would let it reconstruct the server's stream.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pibench.mpc.crypten.compat import import_crypten
from pibench.mpc.crypten.keys import KEY_BYTES
from pibench.mpc.fss import relu as relu_gate
from pibench.mpc.protocols import CLIENT, SERVER

import_crypten()  # the compatibility shim before any crypten import, whichever module comes first
from crypten.mpc.primitives import ArithmeticSharedTensor, BinarySharedTensor  # noqa: E402
from crypten.mpc.provider.provider import TupleProvider  # noqa: E402


class PreprocessingError(RuntimeError):
    """The online phase asked for a tuple the offline phase did not prepare."""


class Prg:
    """A key stream of ring elements: AES-256-CTR under the key, a fresh 128-bit counter block per draw.

    Draw number c encrypts zeros from the counter block (c || 0^64), so draws never
    overlap while one draw stays under 2^64 blocks.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a PRG key has {KEY_BYTES} bytes, got {len(key)}")
        self.key = key
        self.counter = 0

    def ring(self, size: tuple[int, ...]) -> torch.Tensor:
        """Uniform elements of Z_2^64 (as int64) of shape `size`."""
        n = 1
        for s in size:
            n *= s
        nonce = self.counter.to_bytes(8, "little") + bytes(8)
        self.counter += 1
        out = np.empty(8 * n + 16, dtype=np.uint8)  # update_into wants one spare block
        Cipher(algorithms.AES(self.key), modes.CTR(nonce)).encryptor().update_into(np.zeros(8 * n, np.uint8), out)
        return torch.from_numpy(out[:8 * n].view(np.int64)).reshape(size)

    def bits(self, size: tuple[int, ...]) -> torch.Tensor:
        """Uniform single bits (0/1 as int64) of shape `size`."""
        return self.ring(size) & 1


@dataclass(frozen=True)
class Request:
    """One tuple the online phase needs: its kind, operand shapes and the op that combines them.

    additive: Beaver triple (a, b, c = op(a, b)); binary: AND triple (a, b, c = a & b);
    b2a: a random bit shared both ways (rA, rB); fixed: a weights-fixed pair (A, C = op(A, B))
    for the mask B of weight `key` (see pibench.mpc.crypten.weights_fixed); relu: a mask r
    for sizes[0] ReLUs and each party's FSS key for it on the domain of kwargs bits = k (see
    pibench.mpc.fss.relu), the one kind whose dealt part goes to the server too.
    """

    kind: str
    sizes: tuple[tuple[int, ...], ...]
    op: str = ""
    kwargs: tuple[tuple[str, Any], ...] = ()
    key: int = -1

    @classmethod
    def make(cls, kind: str, *sizes: Any, op: str = "", kwargs: dict[str, Any] | None = None,
             key: int = -1) -> "Request":
        items = tuple(sorted((k, _plain(v)) for k, v in (kwargs or {}).items()))
        return cls(kind, tuple(tuple(int(d) for d in s) for s in sizes), op, items, key)

    def to_json(self) -> list[Any]:
        return [self.kind, [list(s) for s in self.sizes], self.op, [list(kv) for kv in self.kwargs], self.key]

    @classmethod
    def from_json(cls, data: list[Any]) -> "Request":
        kind, sizes, op, kwargs, key = data
        return cls.make(kind, *sizes, op=op, kwargs=dict(kwargs), key=key)

    @property
    def relu_bits(self) -> int:
        """k, the comparison domain of a relu request's keys (part of the plan both parties and the dealer share)."""
        return int(dict(self.kwargs)["bits"])

    def ring_op(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ring_op(self.op, x, y, dict(self.kwargs))

    def output_size(self) -> tuple[int, ...]:
        """Shape of the share the dealer sends (c0), computed on meta tensors."""
        if self.kind == "binary":
            return tuple(torch.broadcast_shapes(*self.sizes))
        if self.kind == "b2a":
            return self.sizes[0]
        if self.kind == "relu":  # the key as int64 words, for the domain of k bits the request names
            return (relu_gate.ReluKey.words(math.prod(self.sizes[0]), self.relu_bits),)
        x, y = (torch.empty(s, device="meta") for s in self.sizes)
        return tuple(self.ring_op(x, y).shape)


def ring_op(op: str, x: torch.Tensor, y: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """op(x, y) (mul, matmul, conv2d) on ring elements: int64 arithmetic wraps modulo 2^64."""
    return getattr(torch, op)(x, y, **kwargs)


def _plain(value: Any) -> Any:
    """Op keyword values as JSON-stable lists/ints (conv strides arrive as tuples)."""
    return list(value) if isinstance(value, (tuple, list)) else value


def party_draws(request: Request, prg: Prg, rank: int) -> list[torch.Tensor]:
    """A party's key-stream shares of one tuple, in a fixed order the dealer replays.

    The server's list is its whole share of the tuple; the client's lacks the last
    element, which the dealer computes and sends. Under FSS (kind relu) both lists are
    the mask share r_b, and the dealer sends each party its key.
    """
    kind, sizes = request.kind, request.sizes
    if kind in ("additive", "binary"):
        draws = [prg.ring(sizes[0]), prg.ring(sizes[1])]
    elif kind == "b2a":
        draws = [prg.bits(sizes[0])]
    elif kind in ("fixed", "relu"):
        draws = [prg.ring(sizes[0])]
    else:
        raise ValueError(f"unknown tuple kind {kind!r}")
    if rank == SERVER and not dealt_to_server(request):
        size = request.output_size()
        draws.append(prg.ring(size))
    return draws


def dealt_to_server(request: Request) -> bool:
    """Whether the dealer sends the server a part of this tuple (an FSS key), not only the client."""
    return request.kind == "relu"


@dataclass
class Plan:
    """The recorded tuple requests of one inference at one batch size (and its id at the dealer)."""

    requests: list[Request] = field(default_factory=list)
    dealer_id: int = -1

    def digest(self) -> str:
        """The requests' fingerprint: client and server compare theirs, since the dealer deals the
        client's shares from the client's plan while the server draws its own from its plan."""
        return hashlib.sha256(json.dumps([r.to_json() for r in self.requests]).encode()).hexdigest()


class PreprocessedProvider(TupleProvider):
    """CrypTen's tuple provider for the dealer protocol: live while recording, from a queue online.

    `source.make(plan)` returns this party's full share of each tuple of the plan (the
    client's comes with the dealer's c0 appended), and `source.rank` is the party's
    rank; see `pibench.mpc.crypten.dealer.DealerLink`.
    """

    def __init__(self, source: Any) -> None:
        super().__init__()
        self.source = source
        self.recording: Plan | None = None
        self.queue: deque[tuple[Request, list[torch.Tensor]]] | None = None
        self.served = 0
        self.dealt_bytes = 0  # bytes of the dealer's parts served online so far (what this party received offline)

    # -- phases --------------------------------------------------------------------------
    def record(self) -> "_Recording":
        """Run live (one tuple at a time from the dealer) and record the requests."""
        return _Recording(self)

    def preprocess(self, plan: Plan) -> None:
        """The offline phase: make every tuple of `plan` now; the online phase takes them in order."""
        self.queue = deque(zip(plan.requests, self.source.make(plan)))
        self.served = 0

    def held_bytes(self) -> int:
        """Bytes of this party's preprocessed shares and keys not yet used (all of them before an online phase)."""
        return sum(s.nbytes for _, shares in (self.queue or ()) for s in shares)

    def finish_online(self) -> None:
        """End of an online phase: every preprocessed tuple must have been used."""
        left = len(self.queue) if self.queue is not None else 0
        self.queue = None
        if left:
            raise PreprocessingError(f"the online phase used {self.served} tuples but {self.served + left} were "
                                     "preprocessed; the recorded plan does not match this inference")

    # -- the tuples CrypTen asks for -------------------------------------------------------
    def _next(self, request: Request) -> list[torch.Tensor]:
        if self.queue is None:
            if self.recording is None:
                raise PreprocessingError(f"tuple {request.kind} {request.sizes} requested outside a recorded "
                                         "or preprocessed inference")
            self.recording.requests.append(request)
            return self.source.make(Plan([request]))[0]
        if not self.queue:
            raise PreprocessingError(f"online request #{self.served} ({request.kind} {request.sizes}) has no "
                                     "preprocessed tuple: the plan recorded for this batch size is shorter")
        expected, shares = self.queue.popleft()
        if expected != request:
            raise PreprocessingError(f"online request #{self.served} is {request}, but the preprocessed plan has "
                                     f"{expected} there; the inference differs from the recorded one")
        self.served += 1
        if self.source.rank == CLIENT or dealt_to_server(request):
            self.dealt_bytes += 8 * math.prod(request.output_size())
        return shares

    def generate_additive_triple(self, size0: Any, size1: Any, op: str, device: Any = None, *args: Any,
                                 **kwargs: Any) -> tuple[ArithmeticSharedTensor, ...]:
        if args:
            raise PreprocessingError(f"positional arguments {args} to {op} are not supported by the dealer")
        shares = self._next(Request.make("additive", size0, size1, op=op, kwargs=kwargs))
        return tuple(ArithmeticSharedTensor.from_shares(s, precision=0) for s in shares)

    def generate_binary_triple(self, size0: Any, size1: Any, device: Any = None) -> tuple[BinarySharedTensor, ...]:
        shares = self._next(Request.make("binary", size0, size1))
        return tuple(BinarySharedTensor.from_shares(s) for s in shares)

    def B2A_rng(self, size: Any, device: Any = None) -> tuple[ArithmeticSharedTensor, BinarySharedTensor]:
        r_binary, r_arithmetic = self._next(Request.make("b2a", size))
        return ArithmeticSharedTensor.from_shares(r_arithmetic, precision=0), BinarySharedTensor.from_shares(r_binary)

    def relu_key(self, count: int, bits: int) -> tuple[torch.Tensor, relu_gate.ReluKey]:
        """This party's share of the mask r (count,) and its FSS ReLU key on k = `bits` for one ReLU layer."""
        r, key = self._next(Request.make("relu", (count,), kwargs={"bits": bits}))
        return r, key

    def weights_fixed_pair(self, key: int, input_size: Any, weight_size: Any, op: str,
                           kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """This party's shares of (A, C = op(A, B_key)) for one weights-fixed linear op."""
        a, c = self._next(Request.make("fixed", input_size, weight_size, op=op, kwargs=kwargs, key=key))
        return a, c


class _Recording:
    def __init__(self, provider: PreprocessedProvider) -> None:
        self.provider = provider
        self.plan = Plan()

    def __enter__(self) -> Plan:
        self.provider.recording = self.plan
        return self.plan

    def __exit__(self, *exc: Any) -> None:
        self.provider.recording = None
