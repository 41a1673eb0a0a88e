"""Security modes: which MPC backend runs a program, under which protocol, and what it protects.

Every results row carries `backend`, `protocol` and `security` from here, so a number
is never read without its threat model. All modes assume *semi-honest* parties (they
follow the protocol and try to learn from what they see); none is secure against a
party that deviates from it.

    crypten:dealer  client + server + a dealer process that generates all correlated
                    randomness ahead of the online phase. Secure against a semi-honest
                    client or server as long as the dealer colludes with neither.
    crypten:fss     crypten:dealer with ReLU and max pooling by function secret sharing:
                    the dealer sends each party its own DCF keys offline; online a ReLU
                    layer is one round, 16 bytes per ReLU per party. Same trust as dealer.
    crypten:tfp     CrypTen's trusted *first* party: the client (rank 0) generates every
                    Beaver triple in plaintext, so it could recover the server's weights.
                    INSECURE; kept to benchmark the online cost only.
    spu:cheetah     SecretFlow SPU's CHEETAH: two parties, no dealer (HE for linear layers,
                    silent OT for comparisons; its preprocessing runs inside the online
                    protocol). Secure against a semi-honest client or server.
    spu:semi2k      SPU's SEMI2K with the one beaver provider spu 0.9.5 can run here,
                    `BeaverTfpUnsafe`: the client (rank 0) generates the triples, like
                    crypten:tfp. INSECURE against the client; a benchmark of the online cost.
                    (Its `MultiParty` beaver is rejected, "unsupported beaver type 2";
                    `TrustedThirdParty` needs SPU's beaver server, not in the wheel.)
"""

from __future__ import annotations

from dataclasses import dataclass

from pibench.registry import Registry

CLIENT, SERVER, DEALER = 0, 1, 2  # ranks: the client owns the input, the server the weights


@dataclass(frozen=True)
class Protocol:
    backend: str  # crypten | spu
    name: str  # dealer | tfp | ...
    security: str  # the label written in every results row and the report
    secure: bool  # False: a benchmarking mode that leaks a party's secret
    dealer: bool  # True: a third process (the dealer) takes part
    # The largest |MPC logit - plaintext logit| its fixed-point encoding should give (CrypTen: 16
    # fractional bits, SPU: 18; measured <= 2.3e-4); `pibench bench` warns above it.
    logit_tolerance: float = 1e-3

    @property
    def key(self) -> str:
        return f"{self.backend}:{self.name}"


PROTOCOLS: Registry[Protocol] = Registry("protocol")
PROTOCOLS.register("crypten:dealer", Protocol(
    "crypten", "dealer", "semi-honest client/server; non-colluding dealer (it deals Beaver triples and comparison "
    "tuples offline; ReLU by CrypTen's comparison online)", secure=True, dealer=True))
PROTOCOLS.register("crypten:fss", Protocol(
    "crypten", "fss", "semi-honest client/server; non-colluding dealer (it deals each party its own FSS comparison "
    "keys offline; ReLU in one round online)", secure=True, dealer=True))
PROTOCOLS.register("crypten:tfp", Protocol(
    "crypten", "tfp", "INSECURE: the client generates the randomness and could recover the weights; "
    "benchmark only (CrypTen's stock protocol: tuples made during the inference, weights re-opened per product)",
    secure=False, dealer=False))

PROTOCOLS.register("spu:cheetah", Protocol(
    "spu", "cheetah", "semi-honest client/server; no dealer (CHEETAH: HE + silent OT, preprocessing inside the online "
    "phase)", secure=True, dealer=False))
PROTOCOLS.register("spu:semi2k", Protocol(
    "spu", "semi2k", "INSECURE: SPU 0.9.5's SEMI2K beaver is BeaverTfpUnsafe, the client generates the triples and "
    "could recover the weights; benchmark only", secure=False, dealer=False))

DEFAULT_PROTOCOL = "crypten:dealer"
BACKEND_DEFAULTS = {"crypten": "crypten:dealer", "spu": "spu:cheetah"}  # each backend's secure protocol


def get_protocol(spec: str, backend: str | None = None) -> Protocol:
    """A protocol from "backend:name", or from "name" and `backend` (e.g. "tfp", "crypten")."""
    key = spec if ":" in spec else f"{backend or 'crypten'}:{spec}"
    return PROTOCOLS.get(key)


def protocol_key(protocol: str | None, backend: str | None = None) -> str:
    """The "backend:name" that `--protocol` and `--backend` name together.

    A bare protocol name takes the backend (crypten by default); no protocol means the
    backend's secure default (crypten:dealer, spu:cheetah). Raises ValueError naming the fix.
    """
    if backend is not None and backend not in BACKEND_DEFAULTS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKEND_DEFAULTS)}")
    if protocol is None:
        return BACKEND_DEFAULTS[backend] if backend else DEFAULT_PROTOCOL
    try:
        found = get_protocol(protocol, backend)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    if backend is not None and found.backend != backend:
        names = ", ".join(k.split(":")[1] for k in PROTOCOLS.names(f"{backend}:*"))
        raise ValueError(f"--protocol {protocol} is not a {backend} protocol; with --backend {backend} use one of "
                         f"{names}, or drop --backend")
    return found.key
