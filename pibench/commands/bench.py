"""`pibench bench MODEL...`: real two-party secure inference, latency / bytes / rounds per model.

`--hosts netns` runs each party in its own network namespace and measures every
network profile at its bandwidth cap (root only); see pibench.mpc.net.hosts.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from pibench.commands import Interrupted
from pibench.errors import UsageError

HELP = "measure models in real two-party secure inference, CrypTen or SPU (one set of parties for all models)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model folder (models/<name>) or registry name (random weights: a cost-only run)")
    p.add_argument("--repeats", type=int, default=3, help="timed inferences per model (after a warm-up)")
    p.add_argument("--batch", type=int, default=1, help="inputs per inference")
    add_protocol_argument(p)
    p.add_argument("--network", default="lan,wan",
                   help="network profiles: lan, wan, unshaped, a rate like 100mbit, or name:rate_mbps:rtt_ms; "
                        "projected from the measurement (--hosts local) or measured at their bandwidth (--hosts netns)")
    p.add_argument("--hosts", choices=["local", "netns"], default="local",
                   help="local: parties on loopback, one measurement per model; netns: each party in its own "
                        "network namespace (root), each profile measured with the links capped at its bandwidth "
                        "(RTT is not emulated: it stays projected)")
    p.add_argument("--samples", type=int, default=None,
                   help="test inputs run in MPC for agreement/accuracy (default: one batch, the warm-up; "
                        "0: no warm-up and no agreement, costs only)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per party")
    p.add_argument("--out", default="results/bench", help="results folder (results.csv and layers.csv are appended)")
    p.add_argument("--run-id", default=None, help="run id written in every row (default: UTC time stamp)")
    p.add_argument("--data-dir", default=None, help="dataset folder for models trained on CIFAR / TinyImageNet")
    p.add_argument("--json", action="store_true", help="print one JSON summary per model")


def add_protocol_argument(p: argparse.ArgumentParser) -> None:
    """`--backend` and `--protocol`; `resolve_protocol` turns them into one backend:name."""
    from pibench.mpc.protocols import BACKEND_DEFAULTS, DEFAULT_PROTOCOL, PROTOCOLS

    lines = "; ".join(f"{key}: {PROTOCOLS.get(key).security}" for key in PROTOCOLS)
    defaults = ", ".join(f"{b}: {k.split(':')[1]}" for b, k in BACKEND_DEFAULTS.items())
    p.add_argument("--backend", default=None, choices=sorted(BACKEND_DEFAULTS),
                   help=f"MPC framework; without --protocol it runs its secure protocol ({defaults})")
    p.add_argument("--protocol", default=None, metavar="[BACKEND:]NAME",
                   help=f"MPC protocol (default {DEFAULT_PROTOCOL}; a bare NAME belongs to --backend; all assume "
                        f"semi-honest parties). {lines}")


def resolve_protocol(args: argparse.Namespace) -> None:
    """Set args.protocol to the backend:name that --backend and --protocol name."""
    from pibench.mpc.protocols import protocol_key

    args.protocol = protocol_key(args.protocol, args.backend)


def run(args: argparse.Namespace) -> int:
    from pibench.modelfolder.check import check_model
    from pibench.mpc.net.network import parse_networks
    from pibench.mpc.protocols import check_available
    from pibench.results import check_writable, results_lock, write_result

    # everything that can be checked is checked before a party starts or a file is written
    # (the cheap checks before torch is imported)
    resolve_protocol(args)
    networks = parse_networks(args.network)
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    for spec in args.models:
        check_model(spec)
    check_writable(args.out, "--out")
    from pibench.bench import BenchOptions, bench_models, summary

    options = BenchOptions(
        repeats=args.repeats, batch=args.batch, protocol=args.protocol, networks=networks,
        samples=args.samples, threads=args.threads, data_dir=args.data_dir, run_id=args.run_id, hosts=args.hosts,
    )
    check_available(options.protocol)
    if args.hosts == "netns":  # SIGTERM unwinds like Ctrl-C, so the namespaces are deleted
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    summaries = []
    failed = 0
    with results_lock(args.out):
        try:
            for result in bench_models(args.models, options):
                write_result(args.out, result)
                s = summary(result)
                failed += bool(s["error"])
                summaries.append(s)
                if not args.json:
                    print(_line(s, args.hosts == "netns"), flush=True)
                    warning = _warning(s)
                    if warning:
                        print(warning, flush=True)
        except KeyboardInterrupt:
            raise Interrupted(f"{len(summaries)} of {len(args.models)} models measured, "
                              f"rows kept in {args.out}") from None
    if args.json:
        print(json.dumps(summaries, indent=2))
    else:
        print(f"rows in {Path(args.out) / 'results.csv'} (per op: {Path(args.out) / 'layers.csv'}); "
              f"figures and report: pibench report {args.out}", flush=True)
    return 1 if failed else 0


def _line(s: dict, per_link: bool = False) -> str:
    """One model's summary: protocol, online and offline cost, the projections, agreement and its sample count."""
    if s["error"]:
        return f"{s['model']} [{s['protocol']}]: FAILED: {s['error']}"
    spread = f" (p10-p90 {s['latency_s_p10']:.3f}-{s['latency_s_p90']:.3f})" if s["latency_s_p10"] is not None else ""
    line = (f"{s['model']} [{s['protocol']}]: {s['relus']:,} ReLUs; online {s['latency_s_median']:.3f} s{spread}, "
            f"{s['bytes_per_party'] / 1e6:.2f} MB/party, {s['rounds']} rounds")
    if s.get("fss_bits"):
        line += f", k = {s['fss_bits']}"
    if s["offline_s"] is not None:
        client = s["offline_bytes_client"] if s["offline_bytes_client"] is not None else s["offline_bytes"]
        line += (f"; offline {s['offline_s']:.3f} s, {s['offline_bytes'] / 1e6:.2f} MB (client "
                 f"{client / 1e6:.2f} + server {(s['offline_bytes_server'] or 0) / 1e6:.2f})")
    else:
        line += "; no offline phase"
    line += "; projected " + ", ".join(f"{net} {t:.3f} s" for net, t in s["projected_latency_s"].items())
    n = s["mpc_samples"] or 0
    if s["agreement"] is not None:
        line += (f"; agreement {s['agreement']:.2%} on {n} input{'s' if n != 1 else ''}"
                 f"{' (--samples N checks more)' if n < 8 else ''}, max logit error {s['max_logit_error']:.1e}")
    else:
        line += "; agreement not checked" + (" (--samples 0)" if n == 0 else " (no plaintext reference here)")
    if per_link:
        line += "".join(f"\n  {net}: measured {m['latency_s_median']:.3f} s on {m['link']} (comm {m['comm_s']:.3f} s), "
                        f"projected {s['projected_latency_s'][net]:.3f} s" for net, m in s["measured"].items())
    return line


def _warning(s: dict) -> str | None:
    """A WARNING line when MPC and plaintext disagree or the logits drift past the protocol's tolerance."""
    from pibench.mpc.protocols import get_protocol

    if s["error"] or s["agreement"] is None:
        return None
    tolerance = get_protocol(s["protocol"]).logit_tolerance
    problems = []
    if s["agreement"] < 1:
        problems.append(f"MPC top-1 differs from plaintext on {1 - s['agreement']:.2%} of {s['mpc_samples']} inputs")
    if s["max_logit_error"] > tolerance:
        problems.append(f"max logit error {s['max_logit_error']:.1e} exceeds {s['protocol']}'s tolerance "
                        f"{tolerance:.0e}")
    if not problems:
        return None
    return (f"WARNING {s['model']}: {'; '.join(problems)} (near-tied logits can flip a top-1; an error far above "
            "the tolerance points to activations beyond the fixed-point range)")
