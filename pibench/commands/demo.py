"""`pibench demo`: the digits sweep (configs/demo.yaml), end to end on a laptop CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run the digits demo (configs/demo.yaml): train, linearize 3 ways, MPC, plots, report"

# The repository's configs/ folder (pibench is installed in editable mode by `make install`).
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=str(DEMO_CONFIG), help="sweep config to run instead of the demo's")


def run(args: argparse.Namespace) -> int:
    from pibench.commands.sweep import interrupted
    from pibench.sweep.run import run_sweep

    try:
        run_dir = run_sweep(args.config)
    except KeyboardInterrupt:
        raise interrupted(args.config) from None
    print(f"\nDemo finished. Report: {run_dir / 'report.md'}  (figures in {run_dir / 'figures'})")
    return 0
