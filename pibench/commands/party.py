"""`pibench party --role client|server|dealer --rendezvous tcp://HOST:PORT`: one MPC party.

`pibench bench` starts its parties with this command; on two real machines run it on
each (the client with a public-only model folder, the server with the full one).
"""

from __future__ import annotations

import argparse
import sys

HELP = "run one party (client, server or TTP dealer) of a secure-inference session"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--role", required=True, choices=["client", "server", "dealer"])
    p.add_argument("--rendezvous", required=True, help="tcp://HOST:PORT of rank 0 (the client)")
    p.add_argument("--provider", default="tfp", choices=["tfp", "ttp"], help="CrypTen tuple provider")
    p.add_argument("--threads", type=int, default=1, help="torch threads of this party")
    p.add_argument("--model", action="append", default=[],
                   help="model folder or registry name (repeatable); without it, jobs are JSON lines on stdin")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--samples", type=int, default=None, help="inputs for MPC agreement (default: one batch)")
    p.add_argument("--seed", type=int, default=0, help="seed of random inputs (models without a dataset)")
    p.add_argument("--data-dir", default=None, help="dataset folder (CIFAR, TinyImageNet)")


def run(args: argparse.Namespace) -> int:
    from pibench.mpc.party import read_jobs, run_party, static_jobs

    if args.model:
        samples = args.batch if args.samples is None else args.samples
        options = dict(repeats=args.repeats, batch=args.batch, samples=samples,
                       seed=args.seed, data_dir=args.data_dir)
        jobs = static_jobs(args.model, **options)
    else:
        jobs = read_jobs(sys.stdin)
    run_party(args.role, args.rendezvous, provider=args.provider, threads=args.threads, jobs=jobs)
    return 0
