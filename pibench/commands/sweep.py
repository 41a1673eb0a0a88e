"""`pibench sweep CONFIG.yaml`: train, linearize, benchmark, plot and report in one resumable run."""

from __future__ import annotations

import argparse
from pathlib import Path

from pibench.commands import Interrupted

HELP = "run (or resume) a sweep: teacher, methods × budgets, two-party MPC, figures, report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pibench.sweep.cluster import EXECUTORS

    p.add_argument("config", help="sweep config YAML (see configs/demo.yaml)")
    p.add_argument("--no-report", action="store_true", help="skip figures and report.md")
    p.add_argument(
        "--executor",
        choices=list(EXECUTORS),
        default="local",
        help="; ".join(f"{name}: {what}" for name, what in EXECUTORS.items()),
    )
    p.add_argument("--dry-run", action="store_true", help="list the jobs and their settings; train and measure nothing")


def run(args: argparse.Namespace) -> int:
    from pibench.sweep.run import describe, run_sweep

    if args.dry_run:
        print(describe(args.config, args.executor))
        return 0
    try:
        run_dir = run_sweep(args.config, report=not args.no_report, executor=args.executor)
    except KeyboardInterrupt:
        raise interrupted(args.config) from None
    print(f"results: {run_dir / 'results.csv'}")
    if not args.no_report:
        print(f"report:  {run_dir / 'report.md'}")
    return 0


def interrupted(config: str | Path) -> Interrupted:
    """What a Ctrl-C'd sweep kept: the models made and the rows measured (a re-run resumes from there)."""
    from pibench.sweep.config import load_config
    from pibench.sweep.parts import measured

    cfg = load_config(config)
    models = len({key[0] for key in measured(cfg.run_dir)})
    return Interrupted(f"sweep {cfg.run}: {models} model(s) measured, rows kept in {cfg.run_dir}, models in "
                       f"{cfg.models_dir}; re-run the same command to resume")
