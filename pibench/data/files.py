"""CIFAR-10/100 and TinyImageNet, read from their standard local folders (nothing is downloaded).

A missing or malformed folder raises `MissingFile` naming the files that were expected.
CIFAR's python version is a pickle; it is read with an unpickler that only accepts
plain containers and numpy arrays, so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pibench.data.images import DatasetInfo, ImageFiles, TensorImages, augment_for
from pibench.errors import MissingFile


# ---------------------------------------------------------------- CIFAR
class _ArraysOnly(pickle.Unpickler):
    """Unpickler for CIFAR batches: numpy arrays and builtins only, nothing executable."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data = np.asarray(raw[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(raw[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError, AttributeError) as e:
        raise MissingFile(
            f"{path}: not a CIFAR python batch ({type(e).__name__}: {e}); expected a dict with "
            f"{b'data'!r} (N x 3072 uint8) and {label_key!r}"
        ) from e
    if len(data) != len(labels):
        raise MissingFile(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def _cifar(
    split: str, data_dir: str | None, folder: str, files: dict[str, list[str]], label_key: bytes, info: DatasetInfo, augment
) -> Dataset:
    if data_dir is None:
        raise MissingFile(f"{info.name} is read from a local folder: pass --data-dir DIR containing {folder}/")
    root = Path(data_dir) / folder
    expected = [root / f for f in files[split]]
    missing = [str(p) for p in expected if not p.is_file()]
    if missing:
        wanted = ", ".join(f"{folder}/{f}" for f in files["train"] + files["test"])
        raise MissingFile(
            f"{info.name}: missing {', '.join(missing)}; expected the python version of the dataset "
            f"under {data_dir}: {wanted}"
        )
    parts = [_read_cifar_batch(p, label_key) for p in expected]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    if int(y.max()) >= info.num_classes or int(y.min()) < 0:
        raise MissingFile(f"{root}: labels outside 0..{info.num_classes - 1}; is this the right dataset?")
    return TensorImages(x, y, info, augment_for(info, split, augment))


CIFAR10_INFO = DatasetInfo(
    "cifar10", 3, 32, 10, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), crop_padding=4, flip=True
)
CIFAR100_INFO = DatasetInfo(
    "cifar100", 3, 32, 100, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), crop_padding=4, flip=True
)
CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR100_FILES = {"train": ["train"], "test": ["test"]}


def load_cifar10(split: str, data_dir: str | None = None, *, augment: bool | None = None) -> Dataset:
    """CIFAR-10 from DIR/cifar-10-batches-py/ (data_batch_1..5, test_batch)."""
    return _cifar(split, data_dir, "cifar-10-batches-py", CIFAR10_FILES, b"labels", CIFAR10_INFO, augment)


def load_cifar100(split: str, data_dir: str | None = None, *, augment: bool | None = None) -> Dataset:
    """CIFAR-100 from DIR/cifar-100-python/ (train, test), fine labels."""
    return _cifar(split, data_dir, "cifar-100-python", CIFAR100_FILES, b"fine_labels", CIFAR100_INFO, augment)


# ---------------------------------------------------------------- TinyImageNet
TINY_INFO = DatasetInfo(
    "tinyimagenet", 3, 64, 200, mean=(0.4802, 0.4481, 0.3975), std=(0.2770, 0.2691, 0.2821), crop_padding=8, flip=True
)
TINY_LAYOUT = (
    "tiny-imagenet-200/wnids.txt, tiny-imagenet-200/train/<wnid>/images/*.JPEG, "
    "tiny-imagenet-200/val/val_annotations.txt and tiny-imagenet-200/val/images/*.JPEG"
)


def load_tinyimagenet(split: str, data_dir: str | None = None, *, augment: bool | None = None) -> Dataset:
    """TinyImageNet-200 from DIR/tiny-imagenet-200/; the labelled `val` set serves as test split."""
    if data_dir is None:
        raise MissingFile(f"tinyimagenet is read from a local folder: pass --data-dir DIR containing {TINY_LAYOUT}")
    root = Path(data_dir) / "tiny-imagenet-200"
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise MissingFile(f"tinyimagenet: missing {wnids_file}; expected {TINY_LAYOUT} under {data_dir}")
    wnids = [line.strip() for line in wnids_file.read_text().splitlines() if line.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    files: list[Path] = []
    labels: list[int] = []
    if split == "train":
        for w in wnids:
            found = sorted((root / "train" / w / "images").glob("*.JPEG"))
            if not found:
                raise MissingFile(f"tinyimagenet: no images in {root / 'train' / w / 'images'}; expected {TINY_LAYOUT}")
            files += found
            labels += [index[w]] * len(found)
    else:
        ann = root / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise MissingFile(f"tinyimagenet: missing {ann}; expected {TINY_LAYOUT} under {data_dir}")
        for line in ann.read_text().splitlines():
            fields = line.split("\t")
            if len(fields) < 2:
                continue
            if fields[1] not in index:
                raise MissingFile(f"{ann}: class {fields[1]!r} is not in {wnids_file}")
            path = root / "val" / "images" / fields[0]
            if not path.is_file():
                raise MissingFile(f"tinyimagenet: {path} is listed in {ann} but missing")
            files.append(path)
            labels.append(index[fields[1]])
        if not files:
            raise MissingFile(f"{ann}: no annotations; expected lines 'FILE<TAB>WNID<TAB>...'")
    return ImageFiles(files, labels, TINY_INFO, augment_for(TINY_INFO, split, augment))
