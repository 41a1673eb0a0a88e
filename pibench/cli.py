"""`pibench` command line: one subcommand per module in `pibench.commands`.

Command modules define `HELP`, `add_arguments(parser)` and `run(args) -> int`, and
import heavy libraries (torch, crypten) inside `run`, so `pibench --help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pibench.commands import Interrupted
from pibench.errors import PibenchError

# Subcommand name -> module under pibench.commands, in the order `--help` lists them.
COMMANDS = {
    "count": "count",
    "train": "train",
    "linearize": "linearize",
    "import": "import_onnx",
    "bench": "bench",
    "party": "party",
    "sweep": "sweep",
    "demo": "demo",
    "plot": "plot",
    "report": "report",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pibench", description="Benchmark ReLU-linearized networks in real two-party secure inference."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"pibench.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args._run(args) or 0)
    except PibenchError as e:
        # A problem the user can fix (unknown model, bad budget, corrupt file, dead party, full
        # disk) ends with one line naming it; -v shows the traceback. Any other exception is a
        # bug and keeps its traceback.
        if args.verbose:
            raise
        print(f"pibench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted) as e:
        if args.verbose:
            raise
        what = f": {e}" if isinstance(e, Interrupted) else ""
        print(f"\npibench {args.command}: interrupted{what}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
