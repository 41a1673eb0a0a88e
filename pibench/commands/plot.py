"""`pibench plot RUN_DIR`: trade-off figures from a run folder."""

from __future__ import annotations

import argparse

HELP = "draw accuracy / latency / communication vs ReLU figures for a results run folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a results/<run> folder holding results.csv (and layers.csv)")
    p.add_argument(
        "--anchors", default=None, help="CSV of paper points (method, relus, top-1 accuracy in %) to overlay"
    )
    p.add_argument("--models", nargs="*", default=None, help="models to show in the per-layer breakdown (default all)")


def run(args: argparse.Namespace) -> int:
    from pibench.report.plots import plot_run

    for path in plot_run(args.run_dir, anchors=args.anchors, models=args.models):
        print(path)
    return 0
