"""`pibench count MODEL`: per-layer ReLU accounting."""

from __future__ import annotations

import argparse
import json

from pibench.errors import UsageError

HELP = "count the ReLUs of a registered model or an exported model folder, per layer"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registry name (e.g. resnet18, drd_c100_49k) or a models/<name> folder")
    p.add_argument("--input-size", type=int, default=None, help="input height=width (registry models only)")
    p.add_argument("--num-classes", type=int, default=None, help="classes (registry models only)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from pibench.modelfolder.check import check_model

    check_model(args.model, weights=False)
    from pibench.modelfolder.folder import PROGRAM_ARCH, is_model_folder, load_card, load_public
    from pibench.models import create_model
    from pibench.relu import LayerCount, relu_counts

    if is_model_folder(args.model):
        if args.input_size is not None or args.num_classes is not None:
            raise UsageError("--input-size/--num-classes apply to registry names; a model folder fixes its own")
        card = load_card(args.model)
        name = args.model
    else:
        card, name = None, args.model
    if card is not None and card.arch == PROGRAM_ARCH:  # an exported/imported model: its program's ReLU ops
        from pibench.modelfolder.spec import public_program

        _, program = public_program(args.model)
        counts = [LayerCount(layer, shape, relus) for layer, shape, relus in program.relu_layers()]
    elif card is not None:
        counts = relu_counts(load_public(args.model)[1])
    else:
        counts = relu_counts(create_model(args.model, input_size=args.input_size, num_classes=args.num_classes))
    total = sum(c.relus for c in counts)
    if args.json:
        layers = [{"name": c.name, "shape": list(c.shape), "relus": c.relus} for c in counts]
        print(json.dumps({"model": name, "total_relus": total, "layers": layers}, indent=2))
        return 0
    width = max([len("layer")] + [len(c.name) for c in counts])
    print(f"{'layer':<{width}}  {'C×H×W':>14}  {'kept ReLUs':>12}  {'share':>7}")
    for c in counts:
        shape = "×".join(map(str, c.shape))
        share = c.relus / total if total else 0.0
        print(f"{c.name:<{width}}  {shape:>14}  {c.relus:>12,}  {share:>7.2%}")
    print(f"{'total':<{width}}  {'':>14}  {total:>12,}")
    return 0
