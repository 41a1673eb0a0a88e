"""CIFAR-style ResNets (He et al., 2016) with every ReLU a MaskedReLU.

The flags here are the knobs DeepReDuce (Jha et al., ICML 2021) turns: width
multiplier α, stem stride ρ (ρ=0.5 ⇔ stride-2 stem), blocks per stage, removing the
stem ReLU, *culling* (no ReLU at all in a stage) and *thinning* (no post-add ReLU in
each block). A removed ReLU is structural (an `nn.Identity`), not a masked one.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from pibench.errors import UsageError
from pibench.models.registry import CIFAR10, CIFAR100, DIGITS, TINY, register_model
from pibench.relu import MaskedReLU


def relu_or_identity(keep: bool) -> nn.Module:
    return MaskedReLU() if keep else nn.Identity()


class BasicBlock(nn.Module):
    """conv-bn-relu1-conv-bn (+ shortcut) - relu2; either ReLU can be removed."""

    def __init__(self, in_chans: int, out_chans: int, stride: int, relu1: bool = True, relu2: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chans)
        self.relu1 = relu_or_identity(relu1)
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_chans != out_chans:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chans, out_chans, 1, stride, bias=False), nn.BatchNorm2d(out_chans)
            )
        self.relu2 = relu_or_identity(relu2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with BasicBlocks; stage k (1-based) has `blocks[k-1]` blocks of width `widths[k-1]`.

    `culled` lists 1-based stages without any ReLU; `thinned` removes the post-add
    ReLU of every block; `block_relus` (one (relu1, relu2) pair per block, in order)
    overrides both for full control.
    """

    def __init__(
        self,
        blocks: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        alpha: float = 1.0,
        stem_stride: int = 1,
        stem_relu: bool = True,
        culled: Sequence[int] = (),
        thinned: bool = False,
        block_relus: Sequence[Sequence[bool]] | None = None,
        in_chans: int = 3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if len(blocks) != len(widths):
            raise UsageError(f"blocks {list(blocks)} and widths {list(widths)} must have one entry per stage")
        bad = [s for s in culled if not 1 <= s <= len(blocks)]
        if bad:
            raise UsageError(f"culled stages {bad} out of range 1..{len(blocks)}")
        widths = [max(1, int(round(w * alpha))) for w in widths]
        n_blocks = sum(blocks)
        if block_relus is None:
            block_relus = [
                (stage + 1 not in culled, stage + 1 not in culled and not thinned)
                for stage, n in enumerate(blocks)
                for _ in range(n)
            ]
        if len(block_relus) != n_blocks:
            raise UsageError(f"block_relus has {len(block_relus)} entries for {n_blocks} blocks")

        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = relu_or_identity(stem_relu)
        flags = iter(block_relus)
        stages = []
        in_w = widths[0]
        for stage, (n, w) in enumerate(zip(blocks, widths)):
            layers = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                relu1, relu2 = next(flags)
                layers.append(BasicBlock(in_w, w, stride, bool(relu1), bool(relu2)))
                in_w = w
            stages.append(nn.Sequential(*layers))
        self.layers = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for stage in self.layers:
            x = stage(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def _create_resnet(kwargs: dict[str, Any], **defaults: Any) -> ResNet:
    """Defaults of a named variant, overridden by whatever the caller passes."""
    return ResNet(**{**defaults, **kwargs})


@register_model(**CIFAR10)
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet18, CIFAR variant: 3×3 stem, no max-pool, 17 ReLU layers."""
    return _create_resnet(kwargs)


@register_model(**CIFAR10)
def resnet18_snl(**kwargs: Any) -> ResNet:
    """ResNet18 as SNL (Cho et al., ICML 2022) defines it: no stem ReLU."""
    return _create_resnet(kwargs, stem_relu=False)


@register_model(**DIGITS)
def resnet_digits(**kwargs: Any) -> ResNet:
    """A 3-stage ResNet for 8×8 digits (4,608 ReLUs): the CI and demo model."""
    return _create_resnet(kwargs, blocks=(1, 1, 1), widths=(16, 32, 64))


# DeepReDuce's released ResNet18 configurations (stem ReLU removed in all of them).
_DRD_C100 = {
    "drd_c100_230k": dict(culled=(1,)),
    "drd_c100_115k": dict(culled=(1,), thinned=True),
    "drd_c100_57k": dict(alpha=0.5, culled=(1,), thinned=True),
    "drd_c100_49k": dict(alpha=0.5, culled=(1, 4), thinned=True),
    "drd_c100_29k": dict(stem_stride=2, culled=(1,), thinned=True),
    "drd_c100_14k": dict(alpha=0.5, stem_stride=2, culled=(1,), thinned=True),
    "drd_c100_12k": dict(alpha=0.5, stem_stride=2, culled=(1, 4), thinned=True),
    "drd_c100_7k": dict(alpha=0.5, stem_stride=2, culled=(1,), thinned=True, blocks=(2, 1, 1, 1)),
}
_DRD_TINY = {
    "drd_tiny_918k": dict(culled=(1,)),
    "drd_tiny_459k": dict(culled=(1,), thinned=True),
    "drd_tiny_393k": dict(culled=(1, 2)),
    "drd_tiny_197k": dict(culled=(1, 2), thinned=True),
    "drd_tiny_229k": dict(alpha=0.5, culled=(1,), thinned=True),
    "drd_tiny_115k": dict(stem_stride=2, culled=(1,), thinned=True),
    "drd_tiny_98k": dict(alpha=0.5, culled=(1, 2), thinned=True),
    "drd_tiny_57k": dict(alpha=0.5, stem_stride=2, culled=(1,), thinned=True),
    "drd_tiny_49k": dict(stem_stride=2, culled=(1, 2), thinned=True),
}
DRD_CONFIGS = {**_DRD_C100, **_DRD_TINY}


def _register_drd(name: str, config: dict[str, Any], dataset_defaults: dict[str, Any]) -> None:
    def builder(**kwargs: Any) -> ResNet:
        return _create_resnet(kwargs, stem_relu=False, **config)

    builder.__name__ = name
    builder.__doc__ = f"DeepReDuce released ResNet18 configuration {name}: {config}."
    register_model(**dataset_defaults)(builder)


for _name, _config in _DRD_C100.items():
    _register_drd(_name, _config, CIFAR100)
for _name, _config in _DRD_TINY.items():
    _register_drd(_name, _config, TINY)
