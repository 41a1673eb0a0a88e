"""`pibench party --role client|server|dealer --rendezvous tcp://HOST:PORT`: one MPC party.

`pibench bench` starts its parties with this command. On two real machines run it on
each, with the same --model list and options: the server with the full model folder,
the client with the public part only (model.json and masks.safetensors, and program.json
for an exported model); with
`--out DIR` the client appends its measurements to DIR/results.csv and layers.csv.
Parties that loaded different models refuse to run (exit code 2, naming both hashes).

Run by hand, a party prints one progress line per model; `--events` prints the JSON
event lines (`PIBENCH {...}`) the launcher of `pibench bench` reads instead.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import os
import statistics
import sys

from pibench.commands import Interrupted
from pibench.commands.bench import add_protocol_argument, resolve_protocol
from pibench.errors import UsageError

HELP = "run one party (client, server or dealer) of a secure-inference session"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--role", required=True, choices=["client", "server", "dealer"])
    p.add_argument("--rendezvous", required=True, help="tcp://HOST:PORT of rank 0 (the client)")
    add_protocol_argument(p)
    p.add_argument("--threads", type=int, default=1, help="torch threads of this party")
    p.add_argument("--connect-timeout", type=float, default=300.0,
                   help="seconds to wait for the other parties before giving up (0: wait forever)")
    p.add_argument("--iface", default=None,
                   help="network interface the party talks on (sets GLOO_SOCKET_IFNAME); needed when this "
                        "machine's hostname resolves to a loopback address")
    p.add_argument("--model", action="append", default=[],
                   help="model folder or registry name (repeatable); without it, jobs are JSON lines on stdin")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--samples", type=int, default=None, help="inputs for MPC agreement (default: one batch)")
    p.add_argument("--seed", type=int, default=0, help="seed of random inputs (models without a dataset)")
    p.add_argument("--events", action="store_true",
                   help="print the JSON event lines a launcher reads (PIBENCH {...}) instead of progress lines")
    p.add_argument("--data-dir", default=None, help="dataset folder (CIFAR, TinyImageNet)")
    p.add_argument("--fss-bits", type=int, default=None,
                   help="crypten:fss: the comparison domain k, 8..64 (default 32): every ReLU / max-pool input must "
                        "satisfy |x| < 2^(k-17) in real value, or the logits are wrong; give client and server the "
                        "same k (docs/fss.md). `pibench bench` chooses it per model from the plaintext range")
    results = p.add_argument_group("results (client only)")
    results.add_argument("--out", default=None,
                         help="append the measured rows to OUT/results.csv and OUT/layers.csv (no plaintext "
                              "agreement: the client has no weights)")
    results.add_argument("--network", default="lan,wan", help="network profiles to project onto (as in bench)")
    results.add_argument("--link", default="hosts", help="name of the link the parties ran over, written in every row")
    results.add_argument("--run-id", default=None, help="run id written in every row (default: UTC time stamp)")


def run(args: argparse.Namespace) -> int:
    from pibench.modelfolder.check import check_model
    from pibench.mpc.protocols import protocol_of
    from pibench.results import check_writable, results_lock

    resolve_protocol(args)
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    protocol = protocol_of(args.protocol)
    protocol.check_available()
    for spec in args.model:  # the client holds only the public part
        check_model(spec, weights=args.role == "server")
    if args.out is not None:
        check_writable(args.out, "--out")

    from pibench.modelfolder.spec import PARTY_MODELS
    from pibench.mpc.parties.party import print_event, read_jobs, static_jobs

    on_event = _result_writer(args) if args.out is not None else None
    sink = print_event
    if not args.events:
        sink = functools.partial(_show_ready, args)
        on_event = _with_progress(args.role, on_event)
    if args.iface:
        os.environ["GLOO_SOCKET_IFNAME"] = args.iface
    if args.model:
        samples = args.batch if args.samples is None else args.samples
        options = dict(repeats=args.repeats, batch=args.batch, samples=samples,
                       seed=args.seed, data_dir=args.data_dir, fss_bits=args.fss_bits)
        jobs = static_jobs(args.model, **options)
    else:
        jobs = read_jobs(sys.stdin)
    runner = protocol.party_runner()
    print(_waiting_line(args), file=sys.stderr, flush=True)
    try:
        with results_lock(args.out) if args.out is not None else contextlib.nullcontext():
            runner(args.role, args.rendezvous, models=PARTY_MODELS, protocol=args.protocol, threads=args.threads,
                   jobs=jobs, on_event=on_event, connect_timeout=args.connect_timeout or None, sink=sink)
    except KeyboardInterrupt:
        kept = f"; rows measured so far are kept in {args.out}" if args.out else ""
        raise Interrupted(f"the {args.role} left the session{kept}") from None
    return 0


def _waiting_line(args: argparse.Namespace) -> str:
    """For whom this party waits, where, and until when."""
    from pibench.mpc.protocols import protocol_of

    roles = protocol_of(args.protocol).roles
    peers = " and the ".join(r for r in roles if r != args.role)
    if args.connect_timeout:
        until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=args.connect_timeout)
        limit = f"until {until:%H:%M:%S} UTC (--connect-timeout {args.connect_timeout:.0f} s)"
    else:
        limit = "with no time limit (--connect-timeout 0)"
    return f"{args.role}: waiting for the {peers} at {args.rendezvous} {limit}"


def _show_ready(args: argparse.Namespace, event: dict) -> None:
    """The events a person sees: connected; the per-model lines come from `_with_progress`."""
    if event.get("event") == "ready":
        print(f"{args.role}: connected at {args.rendezvous} ({args.protocol})", flush=True)


def _with_progress(role: str, on_event):
    """`on_event` that first prints one line per finished model."""

    def show(job: dict, event: dict) -> None:
        if event.get("error"):
            line = f"FAILED: {event['error']}"
        elif event.get("event") == "result":
            line = (f"{statistics.median(event['latencies']):.3f} s median online, "
                    f"{event['bytes'] / 1e6:.2f} MB/party, {event['rounds']} rounds")
        else:
            line = "done"
        print(f"{role}: {job['model']}: {line}", flush=True)
        if on_event is not None:
            on_event(job, event)

    return show


def _result_writer(args: argparse.Namespace):
    """The client's sink for its events: rows appended to --out as each model finishes."""
    from pibench.bench import BenchOptions, client_result
    from pibench.mpc.net.network import parse_networks
    from pibench.results import write_result

    if args.role != "client":
        raise UsageError(f"--out: only the client learns the results; drop --out from the {args.role}")
    if not args.model:
        raise UsageError("--out needs the models as --model arguments")
    options = BenchOptions(repeats=args.repeats, batch=args.batch, protocol=args.protocol,
                           networks=parse_networks(args.network), samples=args.samples, threads=args.threads,
                           data_dir=args.data_dir, run_id=args.run_id, seed=args.seed, link=args.link)

    def write(job: dict, event: dict) -> None:
        write_result(args.out, client_result(job["model"], event, options))

    return write
