"""The benchmark runner: models in, result rows out, one party session for all of them.

    for result in bench_models(["resnet18", "models/senet_50k"], BenchOptions(repeats=3)):
        write_result("results/bench", result)      # pibench.results: rows on disk before the next model

`bench_models` consumes its model iterable lazily and yields each model's rows as soon
as they are measured, so a sweep can stream models through the same parties and
resume after a crash. A model that fails (compile error, bad folder) yields rows with
`error` set and the run goes on; a dead or stalled party raises `PartyError`.

The evaluator (this process) holds the model folders and computes the plaintext
reference logits itself; the client party only receives a public copy of each folder
(architecture and masks, or the program of an exported model) and reports the logits
it learned. Every process resolves a model spec through `pibench.modelfolder.spec`.

`hosts` places the parties (pibench.mpc.net.hosts): "local" measures each model once on
loopback and projects every network profile; "netns" runs them in network namespaces
and measures each model once per profile bandwidth, at that tbf cap.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import importlib.metadata
import logging
import shutil
import socket
import statistics
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
import torch

import pibench
from pibench.errors import PibenchError, UsageError
from pibench.modelfolder.export import export
from pibench.modelfolder.folder import (CARD_FILE, MASKS_FILE, PROGRAM_FILE, CheckpointError, is_model_folder,
                                        load_card, public_card_json)
from pibench.modelfolder.spec import model_inputs, public_program, server_model
from pibench.mpc.net.hosts import Link, measurement_links, place_parties
from pibench.mpc.net.network import NETWORKS, NetworkProfile, parse_networks
from pibench.mpc.parties.launch import Session, SessionConfig
from pibench.mpc.protocols import DEFAULT_PROTOCOL, Protocol, get_protocol, protocol_of
from pibench.results import BenchResult, LayerRow, ResultRow

log = logging.getLogger(__name__)

LINEAR_OPS = ("conv", "linear", "affine")


@dataclass
class BenchOptions:
    repeats: int = 3  # timed inferences per model, after the warm-up
    batch: int = 1  # inputs per inference
    protocol: str = DEFAULT_PROTOCOL  # backend:name, see pibench.mpc.protocols (a bare name means crypten)
    networks: list[NetworkProfile] = field(default_factory=lambda: [NETWORKS.get("lan"), NETWORKS.get("wan")])
    samples: int | None = None  # inputs for agreement/accuracy (None: one batch, also the warm-up; 0: neither)
    threads: int = 1  # torch threads per party
    data_dir: str | None = None
    run_id: str | None = None  # default: UTC time stamp
    seed: int = 0  # random inputs of models without a dataset
    link: str = "loopback"  # what the parties' traffic crossed with hosts="local"; recorded in every row
    hosts: str = "local"  # local (loopback) | netns (one namespace per party, every profile measured at its cap)
    session: SessionConfig | None = None  # prefixes / rendezvous host / timeouts; protocol and threads are overridden

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.batch < 1 or (self.samples is not None and self.samples < 0):
            raise UsageError("--repeats and --batch must be at least 1, --samples at least 0")
        if self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")
        if not self.networks:
            raise UsageError("at least one network profile is needed (e.g. lan)")
        if self.run_id is None:
            self.run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.protocol = protocol_of(self.protocol).key

    @property
    def n_samples(self) -> int:
        return self.batch if self.samples is None else self.samples


@functools.cache
def _environment() -> dict[str, str]:
    """Versions and host, written in every row (asked once: the git commit is a subprocess)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(pibench.__file__).parent,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "torch_version": torch.__version__,
        "crypten_version": importlib.metadata.version("crypten"),
        "pibench_version": pibench.__version__,
        "git_commit": commit,
        "host": socket.gethostname(),
    }


@contextlib.contextmanager
def _client_view(spec: str) -> Iterator[str]:
    """What the client may see of a model: a registry name, or a copy of the folder's public files.

    The copy is named "model": the server's folder name (the user's naming of its model) stays
    on the server's side, out of the client's job and logs.
    """
    if not is_model_folder(spec):
        yield spec
        return
    with tempfile.TemporaryDirectory(prefix="pibench-public-") as tmp:
        public = Path(tmp) / "model"
        public.mkdir()
        try:
            (public / CARD_FILE).write_text(public_card_json(spec))
        except CheckpointError:  # a broken card: the client's load of it reports the problem in the job
            shutil.copy2(Path(spec) / CARD_FILE, public / CARD_FILE)
        for name in (MASKS_FILE, PROGRAM_FILE):
            if (Path(spec) / name).is_file():
                shutil.copy2(Path(spec) / name, public / name)
        yield str(public)


# What loading a model spec raises when the spec is wrong (a bad folder, an unknown name, an unreadable file):
# the parties report it. Anything else is a bug and raises.
LOAD_ERRORS = (PibenchError, OSError)


def _memory_error(spec: str, protocol: Protocol, batch: int, bits: int | None = None) -> str:
    """The protocol's pre-flight memory check for one model at comparison domain `bits` (None: the protocol's
    smallest, a lower bound before the domain is chosen); '' when it fits or the protocol has no check.

    A model the evaluator cannot load (a user error) is left to the parties, which report it in its row;
    any other failure is a bug and raises, so the check never turns itself off."""
    if not protocol.memory_check:
        return ""
    try:
        _, program = public_program(spec)
    except LOAD_ERRORS:
        return ""
    return protocol.memory_error(program, batch, bits)


def _domain(spec: str, protocol: Protocol, options: BenchOptions) -> tuple[str, int | None]:
    """(error, k): the comparison domain of a protocol that compares x mod 2^k, chosen from the plaintext range of
    every ReLU / max-pool input on the inputs the client will use (`Protocol.domain`), or an error naming the
    layer and the bound. A model the evaluator cannot load keeps the protocol's default: its parties report why
    it fails, and without a plaintext model there is no reference either, so no row shows logits unchecked."""
    try:
        server = server_model(spec)
    except LOAD_ERRORS:
        return "", None
    try:
        x, _ = model_inputs(server.card, server.program.input_shape, max(options.n_samples, options.batch),
                            options.seed, options.data_dir)
        return "", protocol.choose_domain(server.program, x)
    except PibenchError as e:  # no k holds the model's range: the error names the layer and the bound
        return str(e), None
    except Exception as e:  # the model loads but its plaintext run fails: no k can be vouched for
        log.debug("%s: plaintext range failed", spec, exc_info=True)
        return f"plaintext range for {protocol.key} failed: {type(e).__name__}: {e}", None


def _reference(spec: str, n: int, options: BenchOptions) -> tuple[Any, torch.Tensor, torch.Tensor | None]:
    """The evaluator's plaintext logits on the same inputs the client uses (the first n it draws)."""
    server = server_model(spec)
    if n == 0:
        return server.card, None, None
    # Draw as many as the client does (`Party.prepare`): seeded noise for n samples is not
    # always the first n of a longer draw (torch.randn fills in blocks of 16 numbers).
    x, labels = model_inputs(server.card, server.program.input_shape, max(n, options.batch), options.seed,
                             options.data_dir)
    return server.card, server.logits(x[:n]), labels[:n] if labels is not None else None


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def result_rows(spec: str, card: Any, event: dict[str, Any], ref: torch.Tensor | None,
                labels: torch.Tensor | None, options: BenchOptions, env: dict[str, str], link: Link) -> BenchResult:
    """One measurement's rows (one per profile of `link`); no agreement without a reference `ref`."""
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    protocol = get_protocol(options.protocol)
    name = Path(spec).name  # the folder's name (not the card's, which a copied folder keeps), or the registry name
    base = dict(run_id=options.run_id, timestamp=now, model=name, arch=card.arch if card else spec,
                dataset=card.dataset if card else "", method=card.method if card else "registry",
                budget=card.budget if card else None, accuracy=card.accuracy if card else None,
                # untrained (no accuracy on the card) or no labelled inputs: only the cost columns mean something
                cost_only=card is None or card.accuracy is None or labels is None,
                batch=options.batch, repeats=options.repeats, backend=protocol.backend, protocol=protocol.key,
                security=protocol.security, threads=options.threads, link=link.name, **env)
    if event.get("error"):
        rows = [ResultRow(**base, network=p.name, bandwidth_mbps=p.bandwidth_mbps, rtt_ms=p.rtt_ms,
                          error=event["error"]) for p in link.profiles]
        return BenchResult(name, rows, [], spec)
    agreement = max_err = mpc_accuracy = None
    logits = torch.tensor(event["logits"], dtype=torch.float64)
    if len(logits) and ref is not None:
        agreement = float((logits.argmax(1) == ref.argmax(1)).double().mean())
        max_err = float((logits - ref.double()).abs().max())
    if len(logits) and labels is not None:
        mpc_accuracy = 100 * float((logits.argmax(1) == labels).double().mean())  # percent, as accuracy
    lat = event["latencies"]
    median, comm = statistics.median(lat), statistics.median(event["comm_s"])
    compute = max(0.0, median - comm)
    ops = event["ops"]
    measured = dict(
        relus=event["program"]["relus"], macs=event["program"]["macs"], mpc_agreement=agreement,
        mpc_accuracy=mpc_accuracy, max_logit_error=max_err, mpc_samples=len(logits),
        latency_s_median=median, latency_s_p10=_percentile(lat, 10), latency_s_p90=_percentile(lat, 90),
        latency_s_samples=";".join(f"{t:.6f}" for t in lat), compute_s=compute, comm_s=comm,
        bytes_per_party=event["bytes"], rounds=event["rounds"],
        relu_bytes=sum(o["bytes"] for o in ops if o["op"] == "relu"),
        maxpool_bytes=sum(o["bytes"] for o in ops if o["op"] == "maxpool"),
        linear_bytes=sum(o["bytes"] for o in ops if o["op"] in LINEAR_OPS),
        setup_s=event["setup_s"], setup_bytes=event["setup_bytes"],
        offline_s=event["offline_s"], offline_bytes=event["offline_bytes"],
        offline_bytes_client=event.get("offline_bytes_client"), offline_bytes_server=event.get("offline_bytes_server"),
        fss_bits=event.get("fss_bits"),
        client_storage_bytes=event.get("client_storage_bytes"), peak_rss_client=event.get("peak_rss_client"),
        peak_rss_server=event.get("peak_rss_server"), peak_rss_dealer=event.get("peak_rss_dealer"),
    )
    # CrypTen counts what a party sends plus what it receives; on a full-duplex link each
    # direction carries half of it (checked against a 100 Mbit/s tbf-shaped netns link).
    one_way = event["bytes"] / 2
    rows = [ResultRow(**base, **measured, network=p.name, bandwidth_mbps=p.bandwidth_mbps, rtt_ms=p.rtt_ms,
                      projected_latency_s=p.project(compute, event["rounds"], one_way))
            for p in link.profiles]
    layers = [LayerRow(options.run_id, name, i, o["op"], o["layer"], o["relus"], o["time_s"], o["bytes"], o["rounds"],
                       protocol.key, o.get("offline_bytes_client"), o.get("offline_bytes_server"))
              for i, o in enumerate(ops)]
    return BenchResult(name, rows, layers, spec)


def _measure_on_links(session: Session, net: Any, links: list[Link], job: dict[str, Any], spec: str,
                      i: int) -> list[dict[str, Any]]:
    """One job per link (netns hosts reshaped between them); the client reads a public copy of a folder."""
    events: list[dict[str, Any]] = []
    with _client_view(spec) as public:
        for link in links:
            if net is not None:
                net.set_rate(link.rate_mbit)
                log.info("[%d] %s on %s", i, spec, link.name)
            events.append(session.run({**job, "client_model": public}))
            if events[-1].get("error"):  # the same model fails on every link
                # name the user's folder, not the client's temporary copy of it
                return [{**events[-1], "error": events[-1]["error"].replace(public, spec)}] * len(links)
    return events


def bench_models(models: Iterable[str], options: BenchOptions | None = None) -> Iterator[BenchResult]:
    """Measure each model in one shared party session; yields each model's result when done.

    Raises `PartyError` if a party dies, never connects or stalls (the parties are gone then).
    """
    options = options or BenchOptions()
    cfg = replace(options.session or SessionConfig(), protocol=options.protocol, threads=options.threads)
    env = _environment()
    n = options.n_samples
    links = measurement_links(options.hosts, options.networks, options.link)
    protocol = get_protocol(options.protocol)
    with place_parties(options.hosts, cfg) as (net, cfg), Session(cfg) as session:
        for i, spec in enumerate(models, 1):
            spec = str(spec)
            log.info("[%d] %s: %d repeat(s), batch %d, %d sample(s)", i, spec, options.repeats, options.batch, n)
            job = dict(model=spec, repeats=options.repeats, batch=options.batch, samples=n, seed=options.seed,
                       data_dir=options.data_dir)
            failed = ""
            if protocol.domain:  # before any party loads the model: hopeless batches first, at the smallest k
                failed = _memory_error(spec, protocol, options.batch)
                if not failed:
                    failed, job["fss_bits"] = _domain(spec, protocol, options)
            failed = failed or _memory_error(spec, protocol, options.batch, job.get("fss_bits"))
            if failed:
                log.error("[%d] %s: %s", i, spec, failed)
                events = [{"error": failed}] * len(links)
            else:
                events = _measure_on_links(session, net, links, job, spec, i)
            card, ref, labels = None, None, None
            if not events[0].get("error"):
                try:
                    card, ref, labels = _reference(spec, n, options)
                except Exception as e:  # the model ran in MPC but the evaluator cannot check it
                    events = [{"error": f"plaintext reference failed: {type(e).__name__}: {e}"}] * len(links)
            elif is_model_folder(spec):
                with contextlib.suppress(Exception):
                    card = load_card(spec)
            results = [result_rows(spec, card, event, ref, labels, options, env, link)
                       for link, event in zip(links, events)]
            # layers.csv has no link column: per-op costs come from the first link's measurement
            yield BenchResult(results[0].model, [row for r in results for row in r.rows], results[0].layers, spec)


def client_result(spec: str, event: dict[str, Any], options: BenchOptions) -> BenchResult:
    """The rows a client party writes itself (`pibench party --out`, e.g. on two machines).

    The client has no weights, so there is no plaintext reference: mpc_agreement and
    max_logit_error stay empty; mpc_accuracy is filled when the model's dataset has labels.
    """
    card = load_card(spec) if is_model_folder(spec) else None
    labels = torch.tensor(event["labels"]) if event.get("labels") is not None else None
    link = Link(options.link, None, tuple(options.networks))
    return result_rows(spec, card, event, None, labels, options, _environment(), link)


def summary(result: BenchResult) -> dict[str, Any]:
    """The headline numbers of one model (what `pibench bench --json` prints)."""
    row = result.rows[0]
    return {
        "model": result.spec or result.model, "error": row.error, "protocol": row.protocol,
        "security": row.security, "relus": row.relus, "macs": row.macs, "bytes_per_party": row.bytes_per_party,
        "linear_bytes": row.linear_bytes, "relu_bytes": row.relu_bytes, "rounds": row.rounds, "latency_s_median": row.latency_s_median,
        "latency_s_p10": row.latency_s_p10, "latency_s_p90": row.latency_s_p90,
        "agreement": row.mpc_agreement, "max_logit_error": row.max_logit_error, "mpc_accuracy": row.mpc_accuracy,
        "mpc_samples": row.mpc_samples,
        "offline_s": row.offline_s, "offline_bytes": row.offline_bytes,
        "offline_bytes_client": row.offline_bytes_client, "offline_bytes_server": row.offline_bytes_server,
        "setup_s": row.setup_s, "fss_bits": row.fss_bits,
        "client_storage_bytes": row.client_storage_bytes, "peak_rss_client": row.peak_rss_client,
        "peak_rss_server": row.peak_rss_server, "peak_rss_dealer": row.peak_rss_dealer,
        "setup_bytes": row.setup_bytes,
        "projected_latency_s": {r.network: r.projected_latency_s for r in result.rows},
        "measured": {r.network: {"link": r.link, "latency_s_median": r.latency_s_median, "comm_s": r.comm_s}
                     for r in result.rows},
    }


def measure(model: str | Path | torch.nn.Module, *, protocol: str = DEFAULT_PROTOCOL,
            network: str | list[str] = "lan,wan", repeats: int = 3, batch: int = 1, samples: int | None = None,
            example_input: torch.Tensor | None = None, **options: Any) -> pd.DataFrame:
    """Measure one model with real parties, as `pibench bench` does; its result rows as a DataFrame.

    `model` is a model folder, a registry name, or a torch module (exported to a
    temporary folder first, at `example_input`'s shape). One row per network profile,
    with the columns of results.csv. Other `options` are `BenchOptions` fields. Raises
    RuntimeError when the model could not be measured.
    """
    opts = BenchOptions(protocol=protocol, networks=parse_networks(network), repeats=repeats, batch=batch,
                        samples=samples, **options)
    with contextlib.ExitStack() as stack:
        if isinstance(model, torch.nn.Module):
            if example_input is None:
                raise UsageError("measure needs example_input to export a torch module, e.g. torch.randn(1, 3, 32, 32)")
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pibench-measure-"))) / "model"
            export(model, example_input, folder)
            model = folder
        (result,) = bench_models([str(model)], opts)
    if result.error:
        raise RuntimeError(f"{model}: {result.error}")
    return pd.DataFrame([asdict(row) for row in result.rows])
