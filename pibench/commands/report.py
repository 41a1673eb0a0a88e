"""`pibench report RUN_DIR`: report.md with settings, tables and figures."""

from __future__ import annotations

import argparse

HELP = "write RUN_DIR/report.md (settings, a table per method, comparisons, figures)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a results/<run> folder holding results.csv")
    p.add_argument("--no-plots", action="store_true", help="reuse the figures already drawn")


def run(args: argparse.Namespace) -> int:
    from pibench.report.report import write_report

    print(write_report(args.run_dir, replot=not args.no_plots))
    return 0
