"""`pibench linearize`: reduce a baseline's ReLUs to a budget with DeepReDuce, SENet, SNL or a plug-in method."""

from __future__ import annotations

import argparse
import json

from pibench.errors import UsageError

HELP = "linearize a trained all-ReLU model to a ReLU budget (deepreduce, senet, snl)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True,
                   help="deepreduce, senet, snl, a method an installed package declares in the pibench.methods "
                        "entry-point group, or a module[:attr] path (docs/plugin-methods.md)")
    p.add_argument("--teacher", required=True, help="all-ReLU model folder made by `pibench train`")
    p.add_argument(
        "--budget", required=True, nargs="+",
        help="ReLU budget(s): 50000, 50k, 1.5M or a fraction 0.1 of the teacher's ReLUs; several share work",
    )
    p.add_argument("--out", required=True, nargs="+", help="output model folder(s), one per budget")
    p.add_argument("--epochs", type=int, default=None, help="main training epochs of the method (or --set epochs=N)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="method setting (JSON value), e.g. --set lr=0.01 --set alphas=[1,0.5]; repeatable")
    p.add_argument("--batch-size", type=int, default=None, help="default 128")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--device", default=None)
    p.add_argument("--cache-dir", default=None, help="where shared work is cached (default TEACHER/cache)")


def parse_settings(items: list[str]) -> dict:
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        key = key.replace("-", "_")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def run(args: argparse.Namespace) -> int:
    from pibench.linearize import linearize_many

    options = {k: v for k, v in dict(data_dir=args.data_dir, epochs=args.epochs, seed=args.seed,
                                     batch_size=args.batch_size, device=args.device,
                                     cache_dir=args.cache_dir).items() if v is not None}
    settings = parse_settings(args.set)
    for key, flag in (("method", "--method"), ("teacher_folder", "--teacher"), ("budgets", "--budget"),
                      ("out_folders", "--out")):
        if key in settings:
            raise UsageError(f"--set {key}: give it as {flag}")
    for key in options.keys() & settings.keys():  # a flag and a --set of one name must agree
        if options[key] != settings[key]:
            raise UsageError(f"--{key.replace('_', '-')} {options[key]} and --set {key}={settings[key]} disagree; "
                             "give one of them")
    cards = linearize_many(args.method, args.teacher, args.budget, args.out, **{**options, **settings})
    for out, card in zip(args.out, cards):
        print(f"{out}: {card.method}, {card.relus:,} ReLUs (budget {card.budget:,}), test accuracy {card.accuracy:.2f}%")
    return 0
