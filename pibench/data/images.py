"""Image datasets held in memory or read lazily from files: scaled, normalized, augmented on access."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


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


def augment_for(info: DatasetInfo, split: str, augment: bool | None) -> Augment | None:
    use = (split == "train") if augment is None else augment
    if not use or not (info.crop_padding or info.flip):
        return None
    return Augment(info.crop_padding, info.flip)


def check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
