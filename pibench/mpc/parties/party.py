"""What one party process does: connect, then measure every job (model) it is given.

Roles: the client (rank 0) owns the inputs and is the only one that learns the
logits; the server (rank 1) owns the weights and is the only process that opens a
weights file; the dealer (rank 2, protocol `dealer`) only makes correlated randomness
(`pibench.mpc.crypten.dealer`) and never sees an input, a weight or a share of either.

Jobs arrive as JSON lines (stdin, or `--model` arguments); both parties take them in
the same order and stay in lock step through the MPC protocol. Each party writes
JSON events on stdout, one per line, prefixed with `EVENT_PREFIX`: "ready" once
connected, then per job the client's "result" (measurements and revealed logits,
which belong to the client) or "error", and the server's "done".

Per job: resolve the spec through the `PartyModels` the caller gives (`pibench.modelfolder.spec`:
the server its program with weights, the client the public program and its inputs), exchange the model's public identity
(the hash of a folder's public card and masks, `checkpoint.public_hash`, or the
registry name) and the program fingerprint; parties that loaded different models refuse to run
(`ModelMismatch`, fatal: on two machines it means the wrong folders were given),
while a model that fails to load on either side skips the job on both. Then share
the weights (setup), run the sample inputs (the first batch is the warm-up), then
`repeats` timed inferences with CrypTen's counters read around every op.

With the dealer, the first inference of a batch size records its tuple plan (live,
untimed); every later one is an offline phase (the whole plan made and delivered,
timed as `offline_s`, its bytes `offline_bytes`), a barrier, then the online phase
served from the local queue: the online figures contain no dealer traffic.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import torch

from pibench.errors import PibenchError, UsageError
from pibench.mpc.backend import run_program
from pibench.mpc.crypten.compat import crypten_session, use_provider
from pibench.mpc.parties.channel import recv_json, send_json
from pibench.mpc.parties import memory
from pibench.mpc.parties.memory import dealer_peak_rss
from pibench.mpc.parties.measure import CommMeter, Measurement, Timed, timed_repeats
from pibench.mpc.program import Op, Program
from pibench.mpc.protocols import CLIENT, DEALER, DEFAULT_PROTOCOL, PROTOCOLS, SERVER, Protocol, protocol_of, resolve

if TYPE_CHECKING:  # CrypTen is imported by the party processes only, not by the evaluator
    from pibench.mpc.crypten.backend import CryptenBackend  # or its FSS subclass
    from pibench.mpc.crypten.preprocessing import Plan, PreprocessedProvider

log = logging.getLogger(__name__)

ROLES = {"client": CLIENT, "server": SERVER, "dealer": DEALER}
EVENT_PREFIX = "PIBENCH "
PEER_FAILED = "the {peer} could not prepare this model (its own log says why)"


EventSink = Callable[[dict[str, Any]], None]  # where a party's events go


def print_event(event: dict[str, Any]) -> None:
    """The default sink: one JSON line on stdout, read by the launcher (`pibench.mpc.parties.launch`)."""
    sys.stdout.write(EVENT_PREFIX + json.dumps(event) + "\n")
    sys.stdout.flush()


@dataclass(frozen=True)
class PartyModels:
    """What a party asks of a job's model spec. The caller supplies it (`pibench.modelfolder.spec.PARTY_MODELS`),
    so the MPC layer never reads model folders itself."""

    server: Callable[[str], Program]  # the server's program, with its weights
    # the client's public program, the job's inputs and their labels (None without a dataset)
    client: Callable[[dict[str, Any]], tuple[Program, torch.Tensor, torch.Tensor | None]]
    identity: Callable[[str], str]  # what fixes the protocol of a spec, short and comparable across machines


class ModelMismatch(PibenchError, RuntimeError):
    """The client and the server loaded different models; they must not run a protocol together."""


def check_same_model(mine: dict[str, Any], theirs: dict[str, Any], role: str, spec: str) -> None:
    """Raise ModelMismatch when the parties' models or programs differ.

    Only identities (public digests) cross to the peer, never paths or file names, so the
    message names this party's own model spec and both digests.
    """
    peer = "server" if role == "client" else "client"
    if mine["identity"] and theirs["identity"] and mine["identity"] != theirs["identity"]:
        raise ModelMismatch(
            f"client and server loaded different models: this {role}'s {spec} has {mine['identity']}, the {peer}'s "
            f"has {theirs['identity']}; both must use the same model.json and masks.safetensors")
    if mine["fingerprint"] and theirs["fingerprint"] and mine["fingerprint"] != theirs["fingerprint"]:
        raise ModelMismatch(
            f"client and server compiled different MPC programs from {spec}: program fingerprint "
            f"{mine['fingerprint'][:16]} ({role}) vs {theirs['fingerprint'][:16]} ({peer}); run the same pibench "
            "version on both")


def iter_batches(n: int, batch: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive batches covering n samples."""
    for start in range(0, n, batch):
        yield start, min(n, start + batch)


# -- the party ---------------------------------------------------------------------------------
# What each party tells the other after a job: its counts (bytes, rounds, bytes from the dealer), which follow
# from the public program and protocol. Its timings stay on its own side: a server's per-layer times are a
# side channel the threat model does not name (they reflect its machine and load), so every time in the
# results is the client's own measurement. Its peak memory goes too: a column of its own (what a server needs).
PEER_TOTALS = ("bytes", "rounds", "setup_bytes", "offline_bytes")
PEER_OP_COUNTS = ("bytes", "rounds", "offline_bytes")


class Party:
    def __init__(self, role: str, crypten: Any, engine: type[CryptenBackend], models: PartyModels,
                 provider: PreprocessedProvider | None = None, sink: EventSink = print_event) -> None:
        self.role = role
        self.rank = ROLES[role]
        self.crypten = crypten
        self.engine = engine  # the protocol's backend class (crypten:fss: ReLU and max pooling by FSS keys)
        self.models = models
        self.provider = provider  # None: CrypTen's TFP provider, no dealer
        self.sink = sink
        import crypten.communicator as comm

        self.comm = comm.get()
        self.meter = CommMeter(self.comm, provider)

    # Plain JSON over the parties' channel: no pickle, not counted as protocol traffic.
    def exchange(self, obj: dict[str, Any]) -> dict[str, Any]:
        peer = 1 - self.rank
        group = self.comm.main_group
        if self.rank == CLIENT:
            send_json(obj, peer, group)
            return recv_json(peer, group)[0]
        other, _ = recv_json(peer, group)
        send_json(obj, peer, group)
        return other

    def prepare(self, job: dict[str, Any], spec: str) -> tuple[Program, torch.Tensor | None, torch.Tensor | None]:
        """The server's program (with weights), or the client's public program and inputs (`PartyModels`)."""
        if self.rank == SERVER:
            return self.models.server(spec), None, None
        return self.models.client(job)

    def run_job(self, job: dict[str, Any]) -> dict[str, Any]:
        """Prepare, check the peer holds the same model, measure; the client's event carries the results.

        The peer learns whether this party could load the model and its public identity,
        nothing else: not the path, and not the load error, which stays in this party's
        own event and log.
        """
        spec = job["model"]
        status: dict[str, Any] = {"failed": False, "identity": None, "fingerprint": None}
        error = None
        try:
            program, x, labels = self.prepare(job, spec)
            status["identity"] = self.models.identity(spec)
            status["fingerprint"] = program.fingerprint()
        except Exception as e:  # the session goes on with the next job
            log.debug("job %s failed to prepare", spec, exc_info=True)
            log.error("%s: %s: %s: %s", self.role, spec, type(e).__name__, e)
            error = f"{type(e).__name__}: {e}"
            status["failed"] = True
        peer = self.exchange(status)
        check_same_model(status, peer, self.role, spec)
        if error is None and peer["failed"]:
            error = PEER_FAILED.format(peer="server" if self.rank == CLIENT else "client")
        if error:
            return {"event": "error" if self.rank == CLIENT else "done", "job": job["id"], "error": error}
        dealer_group = self.provider.source.group if self.provider is not None and self.rank == CLIENT else None
        memory.reset_peak()
        if dealer_group is not None:
            dealer_peak_rss(dealer_group, reset=True)
        result = self.measure(job, program, x)
        result["peak_rss"] = memory.peak_rss()
        theirs = self.exchange({"ops": [{k: op[k] for k in PEER_OP_COUNTS} for op in result["ops"]],
                                "peak_rss": result["peak_rss"], **{k: result[k] for k in PEER_TOTALS}})
        if self.rank != CLIENT:
            return {"event": "done", "job": job["id"], "error": None}
        result.update(client_storage_bytes=result.pop("storage_bytes"), peak_rss_client=result.pop("peak_rss"),
                      peak_rss_server=theirs["peak_rss"],
                      peak_rss_dealer=dealer_peak_rss(dealer_group, reset=False) if dealer_group is not None else None)
        dealer = result["offline_bytes"] is not None  # None: no offline phase, on both sides
        if dealer:  # each party's own traffic with the dealer (the server's: its FSS keys)
            result.update(offline_bytes_client=result["offline_bytes"], offline_bytes_server=theirs["offline_bytes"])
            result["offline_bytes"] += theirs["offline_bytes"]
        for k in PEER_TOTALS:  # None (no offline phase) on both sides or on neither
            if result[k] is not None and k != "offline_bytes":
                result[k] = max(result[k], theirs[k])
        for mine, other in zip(result["ops"], theirs["ops"]):
            mine["bytes"] = max(mine["bytes"], other["bytes"])
            mine["rounds"] = max(mine["rounds"], other["rounds"])
            mine_offline = mine.pop("offline_bytes")
            if dealer:  # what each party received from the dealer for this op
                mine.update(offline_bytes_client=mine_offline, offline_bytes_server=other["offline_bytes"])
        result.update(event="result", job=job["id"], error=None,
                      program={"relus": program.relus, "macs": program.macs, "comparisons": program.comparisons,
                               "ops": len(program.ops), "notes": program.notes},
                      labels=labels[: job["samples"]].tolist() if labels is not None else None)
        return result

    def infer(self, backend: CryptenBackend, program: Program, x: torch.Tensor | None, batch: int,
              m: Measurement | None = None) -> torch.Tensor | None:
        """One secure inference: share the input, run the program, reveal logits to the client."""

        def meter(index: int, op: Op) -> Any:
            return Timed(self.meter, m, index + 1)

        shape = (batch, *program.input_shape)
        with Timed(self.meter, m, 0):
            xs = backend.share_input(x, shape)
        y = run_program(program, backend, xs, meter)
        with Timed(self.meter, m, len(program.ops) + 1):
            return backend.reveal_to_client(y)

    def measure(self, job: dict[str, Any], program: Program, x: torch.Tensor | None) -> dict[str, Any]:
        backend = self.engine.for_job(program, self.rank, self.provider, job)
        dealer_bytes = self.provider.source.bytes if self.provider else 0
        self.meter.reset()
        t0 = time.perf_counter()
        backend.share_weights()
        setup_s = time.perf_counter() - t0
        setup_bytes = int(self.meter.read().bytes) + (self.provider.source.bytes - dealer_bytes if self.provider else 0)
        log.info("%s: %s: weights shared in %.2f s", self.role, job["model"], setup_s)

        plans: dict[int, Plan] = {}
        logits = []
        for start, stop in iter_batches(job["samples"], job["batch"]):
            out = self.untimed_inference(backend, program, x[start:stop] if x is not None else None, stop - start,
                                         plans)
            if out is not None:
                logits.append(out)
        m = Measurement(program)
        first = x[: job["batch"]] if x is not None else None
        if self.provider is not None and job["batch"] not in plans:  # no samples: record the plan now
            self.untimed_inference(backend, program, first, job["batch"], plans)

        def offline() -> None:
            offline_s, m.offline_bytes = self.offline(plans[job["batch"]])
            m.offline_s.append(offline_s)
            m.storage_bytes = self.provider.held_bytes()

        def infer(m: Measurement) -> None:
            self.infer(backend, program, first, job["batch"], m)
            if self.provider is not None:
                self.provider.finish_online()

        timed_repeats(self.meter, m, job["repeats"], infer, offline if self.provider is not None else None,
                      f"{self.role}: {job['model']}")
        result = m.summary()
        result.update(setup_s=setup_s, setup_bytes=setup_bytes, fss_bits=backend.bits,
                      logits=torch.cat(logits).tolist() if logits else [])
        return result

    def untimed_inference(self, backend: CryptenBackend, program: Program, x: torch.Tensor | None, batch: int,
                          plans: dict[int, Plan]) -> torch.Tensor | None:
        """An inference outside the timed repeats; with a dealer, the first at a batch size records its plan."""
        if self.provider is None:
            return self.infer(backend, program, x, batch)
        if batch not in plans:
            with self.provider.record() as plan:
                out = self.infer(backend, program, x, batch)
            ours = plan.digest()
            theirs = self.exchange({"plan": ours})["plan"]
            if theirs != ours:  # the dealer's and the server's key streams would part ways
                raise RuntimeError(f"{self.role}: client and server recorded different tuple plans for batch {batch} "
                                   f"({ours[:12]} vs {theirs[:12]}); the parties must run the same pibench")
            self.provider.source.register(plan)
            plans[batch] = plan
            log.info("%s: recorded a plan of %d tuples for batch %d", self.role, len(plan.requests), batch)
            return out
        self.offline(plans[batch])
        out = self.infer(backend, program, x, batch)
        self.provider.finish_online()
        return out

    def offline(self, plan: Plan) -> tuple[float, int]:
        """The offline phase of one inference: all its tuples made and delivered, then both parties in step.

        Returns (seconds, bytes this party exchanged with the dealer)."""
        link = self.provider.source
        t0, b0 = time.perf_counter(), link.bytes
        self.provider.preprocess(plan)
        self.exchange({})  # the online clock starts when both parties hold their tuples
        return time.perf_counter() - t0, link.bytes - b0

    def serve(self, jobs: Iterable[dict[str, Any]], on_event: Callable[[dict, dict], None] | None = None) -> None:
        for job in jobs:
            log.info("%s: job %s: %s", self.role, job["id"], job["model"])
            event = self.run_job(job)
            self.sink(event)
            if on_event is not None:
                on_event(job, event)


def read_jobs(stream: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Jobs as JSON lines; a blank line or EOF ends the session."""
    for line in stream:
        if not line.strip():
            return
        yield json.loads(line)


def static_jobs(models: list[str], **options: Any) -> Iterator[dict[str, Any]]:
    for i, model in enumerate(models):
        yield {"id": i, "model": model, **options}


def _exit_unless_connected(role: str, rendezvous: str, timeout: float) -> threading.Timer:
    """A watchdog that ends this process if it has not joined the session within `timeout` s.

    gloo waits for missing peers without a limit; a party started by hand on another
    machine must not hang forever when its peer never comes.
    """

    def give_up() -> None:
        print(f"pibench party: error: the {role} did not connect to its peers at {rendezvous} within "
              f"{timeout:.0f} s; start the other parties with the same --rendezvous and check that the port "
              "is reachable", file=sys.stderr, flush=True)
        os._exit(2)

    timer = threading.Timer(timeout, give_up)
    timer.daemon = True
    timer.start()
    return timer


def run_party(role: str, rendezvous: str, *, models: PartyModels, protocol: str = DEFAULT_PROTOCOL, threads: int = 1,
              jobs: Iterable[dict[str, Any]] = (), on_event: Callable[[dict, dict], None] | None = None,
              connect_timeout: float | None = None, sink: EventSink = print_event) -> None:
    """Join the session at `rendezvous` as `role` and serve `jobs` (the dealer serves the client's requests).

    With `connect_timeout`, a party that has not connected by then exits with status 2
    and says so.

    `models` turns each job's spec into a program (`pibench.modelfolder.spec.PARTY_MODELS`);
    events go to `sink` (JSON lines on stdout by default).
    `on_event(job, event)` is called with each job's event after it is printed (the
    client's "result" or "error"; the server's "done"). Raises ModelMismatch when the
    peer loaded a different model.
    """
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    proto = protocol_of(protocol)
    if role == "dealer" and not proto.dealer:
        with_dealer = ", ".join(k for k in PROTOCOLS.names() if PROTOCOLS.get(k).dealer)
        raise UsageError(f"protocol {proto.key} has no dealer; a dealer party only exists with {with_dealer}")
    torch.set_num_threads(threads)
    with crypten_session(rendezvous, ROLES[role], provider="TTP" if proto.dealer else "TFP") as crypten:
        # TTP: CrypTen sets up rank 2's groups, which pibench's dealer serves
        watchdog = _exit_unless_connected(role, rendezvous, connect_timeout) if connect_timeout else None
        crypten.init()
        if watchdog is not None:
            watchdog.cancel()
        _serve_session(role, proto, crypten, models, jobs, on_event, sink)
        if role != "dealer":  # the dealer's groups ended with the client's "bye"
            crypten.uninit()


def _serve_session(role: str, proto: Protocol, crypten: Any, models: PartyModels, jobs: Iterable[dict[str, Any]],
                   on_event: Callable[[dict, dict], None] | None, sink: EventSink) -> None:
    """Inside an initialised CrypTen session: the dealer serves; the client and the server run their jobs."""
    # CrypTen is imported by the party processes only (these modules import it), not by the evaluator
    import crypten.communicator as comm

    from pibench.mpc.crypten.dealer import DealerLink, serve_dealer
    from pibench.mpc.crypten.preprocessing import PreprocessedProvider

    if role == "dealer":
        sink({"event": "ready", "role": role})
        (resolve(proto.dealer_loop) if proto.dealer_loop else serve_dealer)(comm.get().ttp_group)
        return
    provider = None
    if proto.dealer:
        provider = (resolve(proto.provider)(ROLES[role], comm.get().ttp_group, comm.get().main_group)
                    if proto.provider else PreprocessedProvider(DealerLink(ROLES[role], comm.get().ttp_group)))
        use_provider(provider)
    sink({"event": "ready", "role": role, "threads": torch.get_num_threads()})
    failed = ""
    try:
        Party(role, crypten, proto.engine_class(), models, provider, sink).serve(jobs, on_event)
    except BaseException as e:
        failed = type(e).__name__
        raise
    finally:
        if provider is not None:  # also on a refused model: the dealer must not wait forever
            with contextlib.suppress(RuntimeError):
                provider.source.close(failed)
            comm.get().ttp_initialized = False  # the dealer left on "bye"; CrypTen must not send its "terminate"

