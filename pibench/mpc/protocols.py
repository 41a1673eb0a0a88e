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
                    layer is two rounds, 16 bytes per ReLU per party plus one bit. Same
                    trust as dealer.
    crypten:gc      Delphi's online phase: ReLU and max pooling by garbled circuits (the server
                    garbles, the client evaluates; OTs between them, no dealer), linear layers
                    free online, their preprocessing dealt by the dealer (Delphi uses HE there;
                    its cost is not measured). Online a ReLU layer is one round trip, 520 B per
                    ReLU. Same trust as dealer for the linear layers; the GC/OT part trusts nobody.
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

Adding a protocol is one `Protocol` entry below plus its module: its party runner, the
class that runs a program's ops, and its pre-flight checks are named as lazy
"module:attr" hooks, so this table imports nothing heavy and every caller (the CLI,
bench, sweeps, the party processes) asks it instead of testing protocol names.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any, Callable

from pibench.errors import MissingExtra, UsageError
from pibench.registry import Registry

CLIENT, SERVER, DEALER = 0, 1, 2  # ranks: the client owns the input, the server the weights

_CRYPTEN_RUNNER = "pibench.mpc.parties.party:run_party"
_SPU_RUNNER = "pibench.mpc.spu.party:run_spu_party"
_SPU_EXTRA = ("spu", "jax")
_SPU_INSTALL = ("the SecretFlow SPU extra, which is not installed: `make install EXTRAS=test,spu` "
                "(or pip install -e \".[spu]\" into a fresh venv)")


def resolve(hook: str) -> Any:
    """The object a "module:attr" hook names, imported on first use."""
    module, _, attr = hook.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Protocol:
    backend: str  # crypten | spu
    name: str  # dealer | tfp | ...
    security: str  # the label written in every results row and the report
    secure: bool  # False: a benchmarking mode that leaks a party's secret
    dealer: bool  # True: a third process (the dealer) takes part
    runner: str  # "module:attr" of the party process: run(role, rendezvous, *, protocol, threads, jobs, ...)
    engine: str = ""  # "module:attr" of the class that runs a program's ops (CrypTen protocols)
    requires: tuple[str, ...] = ()  # modules of an optional extra it needs; checked before any party starts
    extra: str = ""  # what to install when `requires` is missing, for the message
    memory_check: str = ""  # "module:attr": (program, batch, bits) -> why one inference cannot fit here, or ''
    domain: str = ""  # "module:attr": (program, inputs) -> the comparison domain k, for protocols comparing x mod 2^k
    provider: str = ""  # "module:attr": (rank, dealer group, peer group) -> a party's provider; '' the dealer's tuples
    dealer_loop: str = ""  # "module:attr": (dealer group) -> None, the dealer process; '' CrypTen's tuple dealer
    # The largest |MPC logit - plaintext logit| its fixed-point encoding should give (CrypTen: 16
    # fractional bits, SPU: 18; measured <= 2.3e-4); `pibench bench` warns above it.
    logit_tolerance: float = 1e-3

    @property
    def key(self) -> str:
        return f"{self.backend}:{self.name}"

    @property
    def roles(self) -> tuple[str, ...]:
        """The parties of a session under this protocol."""
        return ("client", "server", "dealer") if self.dealer else ("client", "server")

    def party_runner(self) -> Callable[..., None]:
        return resolve(self.runner)

    def engine_class(self) -> type:
        return resolve(self.engine)

    def check_available(self) -> None:
        """Raise MissingExtra (one line, naming the install command) when this protocol's extra is not installed."""
        if not all(importlib.util.find_spec(m) for m in self.requires):
            raise MissingExtra(f"{self.key} needs {self.extra}")

    def memory_error(self, program: Any, batch: int, bits: int | None = None) -> str:
        """Why one inference of `program` at `batch` (comparison domain `bits`; None: the smallest) cannot run
        with every party on this machine, or ''."""
        return resolve(self.memory_check)(program, batch, bits) if self.memory_check else ""

    def choose_domain(self, program: Any, inputs: Any) -> int:
        """The comparison domain k for `program` on the client's `inputs` (plaintext); a PibenchError naming the
        layer and the bound when none fits."""
        return resolve(self.domain)(program, inputs)


PROTOCOLS: Registry[Protocol] = Registry("protocol")
PROTOCOLS.register("crypten:dealer", Protocol(
    "crypten", "dealer", "semi-honest client/server; non-colluding dealer (it deals Beaver triples and comparison "
    "tuples offline; ReLU by CrypTen's comparison online)", secure=True, dealer=True,
    runner=_CRYPTEN_RUNNER, engine="pibench.mpc.crypten.backend:CryptenBackend"))
PROTOCOLS.register("crypten:fss", Protocol(
    "crypten", "fss", "semi-honest client/server; non-colluding dealer (it deals each party its own FSS comparison "
    "keys offline; ReLU in two rounds online)", secure=True, dealer=True,
    runner=_CRYPTEN_RUNNER, engine="pibench.mpc.crypten.fss_backend:FssBackend",
    memory_check="pibench.mpc.crypten.fss_memory:fss_memory_error", domain="pibench.mpc.fss.domain:model_bits"))
PROTOCOLS.register("crypten:gc", Protocol(
    "crypten", "gc", "semi-honest client/server; non-colluding dealer for the linear layers only (garbled circuits "
    "and OTs as in Delphi, no dealer; the linear preprocessing is the dealer's, Delphi's HE offline cost not "
    "measured)", secure=True, dealer=True, runner=_CRYPTEN_RUNNER, engine="pibench.mpc.crypten.gc_backend:GcBackend",
    provider="pibench.mpc.crypten.gc_backend:provider", dealer_loop="pibench.mpc.crypten.gc_backend:serve_dealer",
    memory_check="pibench.mpc.gc.preflight:gc_memory_error", domain="pibench.mpc.gc.preflight:model_bits"))
PROTOCOLS.register("crypten:tfp", Protocol(
    "crypten", "tfp", "INSECURE: the client generates the randomness and could recover the weights; "
    "benchmark only (CrypTen's stock protocol: tuples made during the inference, weights re-opened per product)",
    secure=False, dealer=False, runner=_CRYPTEN_RUNNER, engine="pibench.mpc.crypten.backend:CryptenBackend"))

PROTOCOLS.register("spu:cheetah", Protocol(
    "spu", "cheetah", "semi-honest client/server; no dealer (CHEETAH: HE + silent OT, preprocessing inside the online "
    "phase)", secure=True, dealer=False, runner=_SPU_RUNNER, requires=_SPU_EXTRA, extra=_SPU_INSTALL))
PROTOCOLS.register("spu:semi2k", Protocol(
    "spu", "semi2k", "INSECURE: SPU 0.9.5's SEMI2K beaver is BeaverTfpUnsafe, the client generates the triples and "
    "could recover the weights; benchmark only", secure=False, dealer=False, runner=_SPU_RUNNER, requires=_SPU_EXTRA,
    extra=_SPU_INSTALL))

DEFAULT_PROTOCOL = "crypten:dealer"
BACKEND_DEFAULTS = {"crypten": "crypten:dealer", "spu": "spu:cheetah"}  # each backend's secure protocol


def get_protocol(spec: str, backend: str | None = None) -> Protocol:
    """A protocol from "backend:name", or from "name" and `backend` (e.g. "tfp", "crypten")."""
    key = spec if ":" in spec else f"{backend or 'crypten'}:{spec}"
    return PROTOCOLS.get(key)


def protocol_key(protocol: str | None, backend: str | None = None) -> str:
    """The "backend:name" that `--protocol` and `--backend` name together.

    A bare protocol name takes the backend (crypten by default); no protocol means the
    backend's secure default (crypten:dealer, spu:cheetah). Raises UsageError naming the fix.
    """
    if backend is not None and backend not in BACKEND_DEFAULTS:
        raise UsageError(f"unknown backend {backend!r}; known: {', '.join(BACKEND_DEFAULTS)}")
    if protocol is None:
        return BACKEND_DEFAULTS[backend] if backend else DEFAULT_PROTOCOL
    try:
        found = get_protocol(protocol, backend)
    except KeyError as e:
        raise UsageError(e.args[0]) from None
    if backend is not None and found.backend != backend:
        names = ", ".join(k.split(":")[1] for k in PROTOCOLS.names(f"{backend}:*"))
        raise UsageError(f"--protocol {protocol} is not a {backend} protocol; with --backend {backend} use one of "
                         f"{names}, or drop --backend")
    return found.key


def protocol_of(spec: str) -> Protocol:
    """The protocol named by `spec` ("dealer", "crypten:tfp", ...), or a UsageError listing the known ones."""
    return get_protocol(protocol_key(spec))


def check_available(protocol: str) -> None:
    """Raise one line when `protocol` needs an extra that is not installed (SPU)."""
    protocol_of(protocol).check_available()
