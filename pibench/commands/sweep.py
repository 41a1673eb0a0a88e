"""`pibench sweep CONFIG.yaml`: train, linearize, benchmark, plot and report in one resumable run."""

from __future__ import annotations

import argparse

HELP = "run (or resume) a sweep: teacher, methods × budgets, two-party MPC, figures, report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="sweep config YAML (see configs/demo.yaml)")
    p.add_argument("--no-report", action="store_true", help="skip figures and report.md")


def run(args: argparse.Namespace) -> int:
    from pibench.sweep import run_sweep

    run_dir = run_sweep(args.config, report=not args.no_report)
    print(f"results: {run_dir / 'results.csv'}")
    if not args.no_report:
        print(f"report:  {run_dir / 'report.md'}")
    return 0
