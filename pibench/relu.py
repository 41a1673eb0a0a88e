"""Per-pixel masked ReLU and ReLU accounting.

Every ReLU of a pibench model is a `MaskedReLU` holding a boolean mask over one
sample's (C, H, W): kept positions apply ReLU, the others pass the input through.
The kept positions are what a secure-inference protocol pays for, so the ReLU count
of a model is the number of True entries over all of its masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pibench.errors import UsageError


class MaskedReLU(nn.Module):
    """ReLU applied only where `mask` is True (mask shape = one sample's C, H, W).

    The mask is created lazily from the first input it sees (see `init_masks`), so a
    model does not need to know its feature-map sizes when it is built.
    """

    mask: torch.Tensor | None

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mask", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return torch.relu(x)
        if x.shape[1:] != self.mask.shape:
            raise UsageError(
                f"MaskedReLU got input of per-sample shape {tuple(x.shape[1:])} but its mask has "
                f"shape {tuple(self.mask.shape)}; build the model for the input size it is fed"
            )
        return torch.where(self.mask, torch.relu(x), x)

    @property
    def relus(self) -> int:
        """Number of kept ReLUs (positions where the mask is True)."""
        if self.mask is None:
            raise RuntimeError("MaskedReLU mask is not initialised; call pibench.relu.init_masks")
        return int(self.mask.sum())

    def set_mask(self, mask: torch.Tensor) -> None:
        if self.mask is not None and tuple(mask.shape) != tuple(self.mask.shape):
            raise UsageError(f"mask of shape {tuple(mask.shape)} for a layer of shape {tuple(self.mask.shape)}")
        self.mask = mask.to(dtype=torch.bool, device=self._device()).clone()

    def _device(self) -> torch.device:
        return self.mask.device if self.mask is not None else torch.device("cpu")

    def extra_repr(self) -> str:
        if self.mask is None:
            return "mask=None"
        return f"shape={tuple(self.mask.shape)}, kept={self.relus}/{self.mask.numel()}"


def masked_relus(model: nn.Module) -> dict[str, MaskedReLU]:
    """All MaskedReLU layers of `model` by qualified name, in forward-definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MaskedReLU)}


@torch.no_grad()
def init_masks(model: nn.Module, input_shape: tuple[int, int, int]) -> None:
    """Give every MaskedReLU an all-True mask of the shape it sees for one (C, H, W) input."""
    layers = masked_relus(model)
    shapes: dict[str, torch.Size] = {}
    hooks = [
        layer.register_forward_hook(lambda mod, inp, out, name=name: shapes.__setitem__(name, out.shape[1:]))
        for name, layer in layers.items()
    ]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for name, layer in layers.items():
        if name not in shapes:
            raise RuntimeError(f"MaskedReLU {name!r} is never used in forward; remove it from the model")
        layer.mask = torch.ones(shapes[name], dtype=torch.bool, device=device)


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every layer's mask, keyed by layer name."""
    return {name: layer.mask.detach().clone() for name, layer in masked_relus(model).items()}


def set_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Install masks by layer name; the set of names and each shape must match exactly."""
    layers = masked_relus(model)
    missing = sorted(set(layers) - set(masks))
    extra = sorted(set(masks) - set(layers))
    if missing or extra:
        raise UsageError(f"mask names do not match the model's ReLU layers: missing {missing}, unexpected {extra}")
    for name, layer in layers.items():
        mask = masks[name]
        if layer.mask is not None and tuple(mask.shape) != tuple(layer.mask.shape):
            raise UsageError(
                f"mask {name!r} has shape {tuple(mask.shape)} but the layer's feature map is {tuple(layer.mask.shape)}"
            )
        layer.set_mask(mask)


@dataclass(frozen=True)
class LayerCount:
    """ReLU accounting for one MaskedReLU layer."""

    name: str
    shape: tuple[int, ...]
    relus: int

    @property
    def size(self) -> int:
        return int(torch.Size(self.shape).numel())


def relu_counts(model: nn.Module) -> list[LayerCount]:
    """Per-layer kept ReLU counts, in layer order."""
    return [LayerCount(name, tuple(layer.mask.shape), layer.relus) for name, layer in masked_relus(model).items()]


def count_relus(model: nn.Module) -> int:
    """Total kept ReLUs of a model (per input sample)."""
    return sum(c.relus for c in relu_counts(model))
