"""Datasets read from local files only: digits, synthetic, CIFAR-10/100, TinyImageNet.

Every dataset yields `(x, y)` with `x` a normalized float tensor (C, H, W) and `y` an
int label. Nothing is downloaded: CIFAR and TinyImageNet are read from the standard
folders under `data_dir` and a missing or malformed folder raises `FileNotFoundError`
naming the files that were expected.

CIFAR's python version is a pickle; it is read with an unpickler that only accepts
plain containers and numpy arrays, so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from pibench.errors import MissingFile, UsageError
from pibench.registry import Registry


@dataclass(frozen=True)
class DatasetInfo:
    """What a model must match to consume a dataset."""

    name: str
    in_chans: int
    input_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0  # random-crop padding of the training augmentation; 0 = no crop
    flip: bool = False  # random horizontal flips in training

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_chans, self.input_size, self.input_size)


class Augment:
    """Random crop with zero padding and random horizontal flip on a (C, H, W) tensor."""

    def __init__(self, padding: int, flip: bool) -> None:
        self.padding = padding
        self.flip = flip

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding:
            h, w = x.shape[1:]
            padded = F.pad(x, [self.padding] * 4)
            i, j = torch.randint(0, 2 * self.padding + 1, (2,)).tolist()
            x = padded[:, i : i + h, j : j + w]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(2)
        return x


class _Images(Dataset):
    """What every image dataset here does on access: scale to [0, 1], normalize, augment."""

    def __init__(self, info: DatasetInfo, augment: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        self.info = info
        self.augment = augment
        self._mean = torch.tensor(info.mean).view(-1, 1, 1)
        self._std = torch.tensor(info.std).view(-1, 1, 1)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = (x - self._mean) / self._std
        return self.augment(x) if self.augment is not None else x


class TensorImages(_Images):
    """In-memory images (N, C, H, W) uint8 or float, normalized on access, optionally augmented."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        info: DatasetInfo,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(info, augment)
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._prepare(self.images[i]), int(self.labels[i])


class ImageFiles(_Images):
    """Images read lazily from files (TinyImageNet), normalized and optionally augmented."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], info: DatasetInfo, augment=None) -> None:
        super().__init__(info, augment)
        self.files = list(files)
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.files[i]) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
        return self._prepare(torch.from_numpy(arr.copy()).permute(2, 0, 1)), self.labels[i]


@dataclass(frozen=True)
class DatasetEntry:
    info: DatasetInfo
    load: Callable[..., Dataset]


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def _augment_for(info: DatasetInfo, split: str, augment: bool | None) -> Augment | None:
    use = (split == "train") if augment is None else augment
    if not use or not (info.crop_padding or info.flip):
        return None
    return Augment(info.crop_padding, info.flip)


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


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
    return TensorImages(x, y, info, _augment_for(info, split, augment))


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
    return TensorImages(x, y, info, _augment_for(info, split, augment))


CIFAR10_INFO = DatasetInfo(
    "cifar10", 3, 32, 10, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), crop_padding=4, flip=True
)
CIFAR100_INFO = DatasetInfo(
    "cifar100", 3, 32, 100, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), crop_padding=4, flip=True
)
CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR100_FILES = {"train": ["train"], "test": ["test"]}


def _load_cifar10(split: str, data_dir: str | None = None, *, augment: bool | None = None) -> Dataset:
    """CIFAR-10 from DIR/cifar-10-batches-py/ (data_batch_1..5, test_batch)."""
    return _cifar(split, data_dir, "cifar-10-batches-py", CIFAR10_FILES, b"labels", CIFAR10_INFO, augment)


def _load_cifar100(split: str, data_dir: str | None = None, *, augment: bool | None = None) -> Dataset:
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


def _load_tinyimagenet(split: str, data_dir: str | None = None, *, augment: bool | None = None) -> Dataset:
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
    return ImageFiles(files, labels, TINY_INFO, _augment_for(TINY_INFO, split, augment))


DATASETS.register("digits", DatasetEntry(DIGITS_INFO, _load_digits))
DATASETS.register("synthetic", DatasetEntry(SYNTHETIC_INFO, _load_synthetic))
DATASETS.register("cifar10", DatasetEntry(CIFAR10_INFO, _load_cifar10))
DATASETS.register("cifar100", DatasetEntry(CIFAR100_INFO, _load_cifar100))
DATASETS.register("tinyimagenet", DatasetEntry(TINY_INFO, _load_tinyimagenet))


def dataset_info(name: str) -> DatasetInfo:
    """Input shape, class count and default model input size of a registered dataset."""
    return DATASETS.get(name).info


def get_dataset(name: str, split: str = "test", data_dir: str | None = None, **kw: Any) -> Dataset:
    """A dataset split; `kw` are dataset options (`size` for digits/synthetic, `augment`)."""
    _check_split(split)
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
