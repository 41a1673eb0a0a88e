"""`pibench train`: train an all-ReLU baseline (the teacher of every method)."""

from __future__ import annotations

import argparse

from pibench.errors import UsageError

HELP = "train an all-ReLU baseline model on a dataset and save it as a model folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", required=True, help="registered model, e.g. resnet_digits, resnet18, wrn22_8")
    p.add_argument("--dataset", required=True, help="digits, synthetic, cifar10, cifar100 or tinyimagenet")
    p.add_argument("--out", required=True, help="output model folder, e.g. models/resnet_digits")
    p.add_argument("--epochs", type=int, default=30, help="training epochs (at least 1)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=["cosine", "step", "constant"], default="cosine")
    p.add_argument("--input-size", type=int, default=None, help="model input size (digits/synthetic are resized)")
    p.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py/, cifar-100-python/, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    if args.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {args.epochs} (an untrained model is not a baseline)")
    from pibench.train import train_baseline

    card = train_baseline(
        args.arch,
        args.dataset,
        args.out,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        data_dir=args.data_dir,
        seed=args.seed,
        device=args.device,
        arch_kwargs={"input_size": args.input_size},
    )
    print(f"{args.out}: {card.arch} on {card.dataset}, {card.relus:,} ReLUs, test accuracy {card.accuracy:.2f}%")
    return 0
