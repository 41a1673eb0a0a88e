"""An SPU party process: the same jobs and events as `pibench.mpc.parties.party`, computed by SecretFlow SPU.

The job loop (prepare, check that both parties hold the same model, merge the two
parties' counters, emit events) is `party.Party`'s; this module supplies the SPU
link, runtime and measurement. One runtime per session: CHEETAH's one-time setup
(HE keys, base OTs) is paid once, before the first model, and booked as that
model's setup.

What the numbers mean here:
- bytes: sent + received by a party per inference (max over parties), from SPU's
  per-run link statistics plus the shares pibench sends (input, logits).
- rounds: messages (link send actions) the busier party sends, an upper bound on rounds.
- comm_s: SPU does not split out communication time; reported as zeros.
- offline: neither protocol has a separate offline phase (no dealer): CHEETAH makes its
  correlations (silent OT) inside the online run, so offline_s and offline_bytes are
  empty (None) and that cost is part of the online numbers.
- ops: per program op (each op is its own SPU executable), plus input and output.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Iterable

import torch

from pibench.errors import UsageError
from pibench.mpc.parties.measure import Measurement, timed_repeats
from pibench.mpc.parties.party import (ROLES, EventSink, ModelMismatch, Party, PartyModels, _exit_unless_connected,
                                       iter_batches, print_event)
from pibench.mpc.program import Program
from pibench.mpc.protocols import protocol_of
from pibench.mpc.spu.backend import SpuBackend, runtime_config, set_up_runtime
from pibench.mpc.spu.link import SpuLink

log = logging.getLogger(__name__)


class SpuParty(Party):
    """A client or server computing with SPU; `Party` supplies the job loop."""

    def __init__(self, role: str, protocol: str, link: SpuLink, models: PartyModels,
                 sink: EventSink = print_event) -> None:  # no CrypTen: Party.__init__ is not called
        import spu

        self.role, self.rank = role, ROLES[role]
        self.models, self.sink = models, sink
        self.link = self.meter = link
        self.provider = None  # no dealer: SPU's protocols make their correlations themselves
        cfg = runtime_config(protocol)
        self.runtime = spu.Runtime(link.context, cfg)
        self.io = spu.Io(2, cfg)
        link.reset()
        t0 = time.perf_counter()
        set_up_runtime(self.runtime, self.io, link)
        self.session_setup = (time.perf_counter() - t0, int(link.read().bytes))  # booked on the first model
        log.info("%s: SPU %s runtime set up in %.2f s, %.1f MB", role, protocol, self.session_setup[0],
                 self.session_setup[1] / 1e6)

    def exchange(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.link.exchange(obj)

    def measure(self, job: dict[str, Any], program: Program, x: torch.Tensor | None) -> dict[str, Any]:
        backend = SpuBackend(program, self.rank, self.runtime, self.io, self.link)
        self.link.reset()
        t0 = time.perf_counter()
        backend.share_weights()
        digest = backend.compile(job["batch"])
        if self.exchange({"executables": digest})["executables"] != digest:
            raise ModelMismatch(f"client and server compiled different SPU executables for {job['model']}; "
                                "run the same pibench, spu and jax versions on both")
        setup_s = time.perf_counter() - t0 + self.session_setup[0]
        setup_bytes = int(self.link.read().bytes) + self.session_setup[1]
        self.session_setup = (0.0, 0)
        log.info("%s: %s: weights shared and compiled in %.2f s", self.role, job["model"], setup_s)

        logits = []
        for start, stop in iter_batches(job["samples"], job["batch"]):
            out = self.infer(backend, program, x[start:stop] if x is not None else None, stop - start)
            if out is not None:
                logits.append(out)
        first = x[: job["batch"]] if x is not None else None
        if not job["samples"]:  # the first run of new executables is slower: always warm up
            self.infer(backend, program, first, job["batch"])
        m = Measurement(program)
        timed_repeats(self.link, m, job["repeats"], lambda m: self.infer(backend, program, first, job["batch"], m),
                      name=f"{self.role}: {job['model']}")
        backend.free_weights()
        result = m.summary()
        result.update(setup_s=setup_s, setup_bytes=setup_bytes, offline_s=None, offline_bytes=None,
                      logits=torch.cat(logits).tolist() if logits else [])
        return result


def _log_dir() -> str:
    """A fresh folder for this party's SPU log; those of parties that were killed are removed."""
    root = os.path.join(tempfile.gettempdir(), "pibench-spu")
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):
        if name.isdigit() and not os.path.exists(f"/proc/{name}"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    path = os.path.join(root, str(os.getpid()))
    os.makedirs(path, exist_ok=True)
    return path


def run_spu_party(role: str, rendezvous: str, *, models: PartyModels, protocol: str, threads: int = 1,
                  jobs: Iterable[dict[str, Any]] = (), on_event: Callable[[dict, dict], None] | None = None,
                  connect_timeout: float | None = None, sink: EventSink = print_event) -> None:
    """Join the SPU session at `rendezvous` (the client listens there; see `pibench.mpc.spu.link.peer_addresses`), serve `jobs`.

    `protocol`: spu:cheetah or spu:semi2k.

    `threads`: the party is pinned to that many CPUs (SPU sizes its thread pools to the
    machine, so pinning is what makes parties comparable). A party whose peer has not
    connected within `connect_timeout` s exits with status 2 and says so.
    """
    proto = protocol_of(protocol)
    if proto.backend != "spu":
        raise UsageError(f"protocol {proto.key} is not an SPU protocol; use spu:cheetah or spu:semi2k")
    if role not in ("client", "server"):
        raise UsageError(f"an SPU party is a client or a server, not {role!r}; SPU's protocols need no dealer")
    cpus = sorted(os.sched_getaffinity(0))
    if threads < len(cpus):
        start = ROLES[role] * threads % len(cpus)
        os.sched_setaffinity(0, (cpus + cpus)[start: start + threads])
    torch.set_num_threads(threads)
    log_dir = _log_dir()
    timeout = connect_timeout or 300.0
    watchdog = _exit_unless_connected(role, rendezvous, timeout)
    link = None
    try:
        link = SpuLink(ROLES[role], rendezvous, os.path.join(log_dir, "spu.log"), timeout)
        party = SpuParty(role, proto.name, link, models, sink)
        watchdog.cancel()
        sink({"event": "ready", "role": role, "threads": threads, "protocol": proto.key})
        party.serve(jobs, on_event)
    finally:
        watchdog.cancel()
        if link is not None:  # stops brpc's threads and listening port on every exit
            link.close()
        shutil.rmtree(log_dir, ignore_errors=True)
