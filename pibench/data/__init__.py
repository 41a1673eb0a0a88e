"""Datasets read from local files only: digits, synthetic, CIFAR-10/100, TinyImageNet.

Every dataset yields `(x, y)` with `x` a normalized float tensor (C, H, W) and `y` an
int label. Nothing is downloaded: CIFAR and TinyImageNet are read from the standard
folders under `data_dir` (`pibench.data.files`) and a missing or malformed folder raises
`MissingFile` naming the files that were expected. This module is the registry of
datasets by name, the two generated ones, and the loaders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from pibench.data.files import CIFAR10_INFO, CIFAR100_INFO, TINY_INFO, load_cifar10, load_cifar100, load_tinyimagenet
from pibench.data.images import DatasetInfo, TensorImages, augment_for, check_split
from pibench.errors import UsageError
from pibench.registry import Registry


@dataclass(frozen=True)
class DatasetEntry:
    info: DatasetInfo
    load: Callable[..., Dataset]
    folder: str | None = None  # the folder under data_dir it is read from (None: bundled or generated)


DATASETS: Registry[DatasetEntry] = Registry("dataset")


# ---------------------------------------------------------------- digits
DIGITS_INFO = DatasetInfo("digits", 1, 8, 10, mean=(0.3067,), std=(0.3772,))
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def _load_digits(split: str, data_dir: str | None = None, *, size: int | None = None, augment: bool | None = None) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images), a fixed stratified 80/20 split.

    `size` upsamples (bilinear) to size x size, e.g. 16 or 32 to feed a CIFAR-shaped
    model. No augmentation: the images are tiny and centred.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=digits.target
    )
    idx = torch.from_numpy(idx_train if split == "train" else idx_test)
    x, y = x[idx], y[idx]
    info = DIGITS_INFO
    if size is not None and size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        info = DatasetInfo(**{**info.__dict__, "input_size": size})
    return TensorImages(x, y, info, augment_for(info, split, augment))


# ---------------------------------------------------------------- synthetic
SYNTHETIC_INFO = DatasetInfo("synthetic", 3, 32, 10, mean=(0.0,), std=(1.0,))


def _load_synthetic(
    split: str,
    data_dir: str | None = None,
    *,
    shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    size: int | None = None,
    samples: int | None = None,
    seed: int = 0,
    augment: bool | None = None,
) -> Dataset:
    """Gaussian images labelled by a fixed random teacher, so the task is learnable.

    The teacher (seeded by `seed`) average-pools the image to 4x4, projects it through a
    random tanh layer and takes the argmax of a random linear read-out; train and test
    draw different images from the same teacher. `size` overrides H=W of `shape`.
    """
    c, h, w = (shape[0], size, size) if size is not None else tuple(shape)
    n = samples if samples is not None else (2000 if split == "train" else 500)
    gen = torch.Generator().manual_seed(seed)
    features = c * 16
    w1 = torch.randn(features, 64, generator=gen) / features**0.5
    w2 = torch.randn(64, num_classes, generator=gen) / 8.0
    data_gen = torch.Generator().manual_seed(seed * 1000 + (1 if split == "train" else 2))
    x = torch.randn(n, c, h, w, generator=data_gen)
    pooled = F.adaptive_avg_pool2d(x, 4).flatten(1) * 4.0
    y = torch.tanh(pooled @ w1).matmul(w2).argmax(1)
    info = DatasetInfo("synthetic", c, h, num_classes, mean=(0.0,) * c, std=(1.0,) * c)
    return TensorImages(x, y, info, None)


DATASETS.register("digits", DatasetEntry(DIGITS_INFO, _load_digits))
DATASETS.register("synthetic", DatasetEntry(SYNTHETIC_INFO, _load_synthetic))
DATASETS.register("cifar10", DatasetEntry(CIFAR10_INFO, load_cifar10, "cifar-10-batches-py"))
DATASETS.register("cifar100", DatasetEntry(CIFAR100_INFO, load_cifar100, "cifar-100-python"))
DATASETS.register("tinyimagenet", DatasetEntry(TINY_INFO, load_tinyimagenet, "tiny-imagenet-200"))


def dataset_info(name: str) -> DatasetInfo:
    """Input shape, class count and default model input size of a registered dataset."""
    return DATASETS.get(name).info


def get_dataset(name: str, split: str = "test", data_dir: str | None = None, **kw: Any) -> Dataset:
    """A dataset split; `kw` are dataset options (`size` for digits/synthetic, `augment`)."""
    check_split(split)
    entry = DATASETS.get(name)
    return entry.load(split, data_dir, **kw)


def make_loaders(
    name: str,
    data_dir: str | None = None,
    *,
    batch_size: int = 128,
    num_workers: int = 0,
    seed: int = 0,
    train_subset: int | None = None,
    **kw: Any,
) -> tuple[DataLoader, DataLoader]:
    """(train, test) loaders; the train loader shuffles with a seeded generator.

    `train_subset` keeps the first N training samples (for fast tests).
    """
    train = get_dataset(name, "train", data_dir, **kw)
    test = get_dataset(name, "test", data_dir, **kw)
    if train_subset is not None:
        train = torch.utils.data.Subset(train, range(min(train_subset, len(train))))
    gen = torch.Generator().manual_seed(seed)
    pin = torch.cuda.is_available()
    train_loader = DataLoader(
        train, batch_size=batch_size, shuffle=True, generator=gen, num_workers=num_workers, pin_memory=pin, drop_last=False
    )
    test_loader = DataLoader(test, batch_size=max(batch_size, 256), shuffle=False, num_workers=num_workers, pin_memory=pin)
    return train_loader, test_loader


def holdout_loaders(train_loader: DataLoader, plain: Dataset, fraction: float, seed: int) -> tuple[DataLoader, DataLoader]:
    """(train, held-out) loaders from a training loader: a seeded `fraction` of its samples is held out
    to choose by (read from `plain`, the same training split without augmentation), the rest trains.

    Choosing among several trained models on the test set would report the best of several tries
    as if it were one; a held-out part of the training set keeps the test accuracy honest.
    """
    if not 0 < fraction < 1:
        raise UsageError(f"the held-out fraction of the training set must be between 0 and 1, got {fraction}")
    dataset = train_loader.dataset
    base = list(dataset.indices) if isinstance(dataset, torch.utils.data.Subset) else list(range(len(dataset)))
    order = torch.randperm(len(base), generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = max(1, round(fraction * len(base)))
    held, kept = sorted(order[:n_held]), sorted(order[n_held:])
    common = dict(num_workers=train_loader.num_workers, pin_memory=train_loader.pin_memory)
    train = DataLoader(torch.utils.data.Subset(dataset, kept), batch_size=train_loader.batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed), **common)
    held_out = DataLoader(torch.utils.data.Subset(plain, [base[i] for i in held]),
                          batch_size=max(train_loader.batch_size or 1, 256), shuffle=False, **common)
    return train, held_out


def dataset_options(name: str, input_shape: Sequence[int], num_classes: int) -> dict[str, Any]:
    """The `get_dataset` options that make dataset `name` feed a model of this input and output.

    digits is upsampled to the model's input size, synthetic takes any shape; CIFAR and
    TinyImageNet have fixed shapes and a mismatch raises ValueError.
    """
    info = dataset_info(name)
    c, h, w = (int(v) for v in input_shape)
    if name == "synthetic":
        return {"shape": (c, h, w), "num_classes": int(num_classes)}
    if (c, num_classes) != (info.in_chans, info.num_classes) or h != w:
        raise UsageError(
            f"dataset {name} has {info.in_chans} channels and {info.num_classes} classes; a model with input "
            f"{list(input_shape)} and {num_classes} classes cannot use it"
        )
    if name == "digits":
        return {"size": h} if h != info.input_size else {}
    if h != info.input_size:
        raise UsageError(f"dataset {name} has {info.input_size}x{info.input_size} images, the model expects {h}x{w}")
    return {}
