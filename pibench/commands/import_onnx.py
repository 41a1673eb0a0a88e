"""`pibench import MODEL.onnx --out models/NAME`: an ONNX file as a model folder."""

from __future__ import annotations

import argparse

from pibench.errors import UsageError

HELP = "import an ONNX model (a CNN of supported ops) as a model folder, without its Python class"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("onnx", help="the .onnx file (one input of fixed per-sample shape, e.g. N x 3 x 32 x 32)")
    p.add_argument("--out", required=True, help="the model folder to write, e.g. models/NAME")
    p.add_argument("--masks", default=None,
                   help="masks.safetensors: a boolean per-sample mask per ReLU node name (default: every ReLU kept)")
    p.add_argument("--dataset", default="random",
                   help="dataset whose test inputs the benchmark feeds (default: seeded random inputs)")
    p.add_argument("--accuracy", type=float, default=None, help="plaintext top-1 accuracy (%%) to record")
    p.add_argument("--name", default=None, help="model name (default: the folder's name)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from pibench.modelfolder.folder import is_model_folder
    from pibench.modelfolder.onnx_import import import_onnx

    if is_model_folder(args.out):
        raise UsageError(f"{args.out} is already a model folder; choose a new --out or remove it")
    masks = None
    if args.masks:
        try:
            masks = load_file(args.masks)
        except (SafetensorError, OSError) as e:
            raise UsageError(f"{args.masks}: cannot read masks ({e}); give a safetensors file of boolean masks") from e
    card = import_onnx(Path(args.onnx), args.out, masks, name=args.name, dataset=args.dataset,
                       accuracy=args.accuracy)
    print(f"{args.out}: {card.relus:,} ReLUs in {len(card.layers)} layers, input {tuple(card.input_shape)}, "
          f"{card.num_classes} outputs")
    return 0
