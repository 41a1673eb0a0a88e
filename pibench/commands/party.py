"""`pibench party --role client|server|dealer --rendezvous tcp://HOST:PORT`: one MPC party.

`pibench bench` starts its parties with this command. On two real machines run it on
each, with the same --model list and options: the server with the full model folder,
the client with the public part only (model.json and masks.safetensors, and program.json
for an exported model); with
`--out DIR` the client appends its measurements to DIR/results.csv and layers.csv.
Parties that loaded different models refuse to run (exit code 2, naming both hashes).
"""

from __future__ import annotations

import argparse
import os
import sys

from pibench.commands.bench import add_protocol_argument, resolve_protocol

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
    p.add_argument("--data-dir", default=None, help="dataset folder (CIFAR, TinyImageNet)")
    results = p.add_argument_group("results (client only)")
    results.add_argument("--out", default=None,
                         help="append the measured rows to OUT/results.csv and OUT/layers.csv (no plaintext "
                              "agreement: the client has no weights)")
    results.add_argument("--network", default="lan,wan", help="network profiles to project onto (as in bench)")
    results.add_argument("--link", default="hosts", help="name of the link the parties ran over, written in every row")
    results.add_argument("--run-id", default=None, help="run id written in every row (default: UTC time stamp)")


def run(args: argparse.Namespace) -> int:
    from pibench.mpc.parties.party import protocol_of, read_jobs, run_party, static_jobs

    resolve_protocol(args)
    on_event = None
    if args.out is not None:
        on_event = _result_writer(args)
    if args.iface:
        os.environ["GLOO_SOCKET_IFNAME"] = args.iface
    if args.model:
        samples = args.batch if args.samples is None else args.samples
        options = dict(repeats=args.repeats, batch=args.batch, samples=samples,
                       seed=args.seed, data_dir=args.data_dir)
        jobs = static_jobs(args.model, **options)
    else:
        jobs = read_jobs(sys.stdin)
    runner = run_party
    if protocol_of(args.protocol).backend == "spu":
        from pibench.mpc.spu.party import run_spu_party as runner
    runner(args.role, args.rendezvous, protocol=args.protocol, threads=args.threads, jobs=jobs,
              on_event=on_event, connect_timeout=args.connect_timeout or None)
    return 0


def _result_writer(args: argparse.Namespace):
    """The client's sink for its events: rows appended to --out as each model finishes."""
    from pibench.bench import BenchOptions, client_result, write_result
    from pibench.mpc.net.network import parse_networks

    if args.role != "client":
        raise ValueError(f"--out: only the client learns the results; drop --out from the {args.role}")
    if not args.model:
        raise ValueError("--out needs the models as --model arguments")
    options = BenchOptions(repeats=args.repeats, batch=args.batch, protocol=args.protocol,
                           networks=parse_networks(args.network), samples=args.samples, threads=args.threads,
                           data_dir=args.data_dir, run_id=args.run_id, seed=args.seed, link=args.link)

    def write(job: dict, event: dict) -> None:
        write_result(args.out, client_result(job["model"], event, options))

    return write
