"""VGG for CIFAR (Simonyan & Zisserman, 2015): conv-BN-ReLU stacks, one linear head.

`pool="avg"` swaps max-pooling for average pooling, which is linear and so free in
MPC (a max-pool costs secure comparisons, like ReLUs).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from pibench.errors import UsageError
from pibench.models.registry import CIFAR10, DIGITS, register_model
from pibench.relu import MaskedReLU

VGG16_LAYERS = (64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512, "P")


class VGG(nn.Module):
    """Channels list with "P" for a 2×2 pooling; global average pool, then a linear head."""

    def __init__(
        self,
        layers: Sequence[int | str] = VGG16_LAYERS,
        pool: str = "max",
        in_chans: int = 3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if pool not in ("max", "avg"):
            raise UsageError(f"pool must be 'max' or 'avg', got {pool!r}")
        modules: list[nn.Module] = []
        c = in_chans
        for item in layers:
            if item == "P":
                modules.append(nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2))
            else:
                modules += [nn.Conv2d(c, int(item), 3, 1, 1, bias=False), nn.BatchNorm2d(int(item)), MaskedReLU()]
                c = int(item)
        self.features = nn.Sequential(*modules)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register_model(**CIFAR10)
def vgg16(**kwargs: Any) -> VGG:
    """VGG16, CIFAR variant (13 conv layers, a linear classifier)."""
    return VGG(**{"layers": VGG16_LAYERS, **kwargs})


@register_model(**DIGITS)
def cnn_digits(**kwargs: Any) -> VGG:
    """A 3-conv net for 8×8 digits (4,096 ReLUs), average pooling."""
    return VGG(**{"layers": (16, 32, "P", 64), "pool": "avg", **kwargs})
