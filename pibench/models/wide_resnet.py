"""WideResNet-22-8 (Zagoruyko & Komodakis, 2016) as SNL defines it, with MaskedReLUs.

Pre-activation blocks: BN-ReLU on each block's input (the first block's 16-channel
input included) and BN-ReLU after its first conv; the final BN has no ReLU unless
`final_relu=True` (SNL's count 1,359,872 vs 1,392,640 with it, on 32×32).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pibench.errors import UsageError
from pibench.models.registry import CIFAR100, register_model
from pibench.relu import MaskedReLU


class PreActBlock(nn.Module):
    def __init__(self, in_chans: int, out_chans: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chans)
        self.relu1 = MaskedReLU()
        self.conv1 = nn.Conv2d(in_chans, out_chans, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.relu2 = MaskedReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, 1, 1, bias=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_chans != out_chans:
            self.shortcut = nn.Conv2d(in_chans, out_chans, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        return out + self.shortcut(act)


class WideResNet(nn.Module):
    def __init__(
        self,
        depth: int = 22,
        width: int = 8,
        dropout: float = 0.0,
        final_relu: bool = False,
        in_chans: int = 3,
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise UsageError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        stages = []
        in_w = widths[0]
        for stage, w in enumerate(widths[1:]):
            blocks = []
            for i in range(n):
                blocks.append(PreActBlock(in_w, w, 2 if stage > 0 and i == 0 else 1, dropout))
                in_w = w
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.ModuleList(stages)
        self.bn = nn.BatchNorm2d(in_w)
        self.relu: nn.Module = MaskedReLU() if final_relu else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for stage in self.layers:
            x = stage(x)
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model(**CIFAR100)
def wrn22_8(**kwargs: Any) -> WideResNet:
    """WideResNet-22-8 (SNL's definition)."""
    return WideResNet(**{"depth": 22, "width": 8, **kwargs})
