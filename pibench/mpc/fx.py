"""torch.fx tracing of (masked) models, and eval-mode BatchNorm as weights: what the compiler reads a model with.

A `MaskedReLU` and an SNL-style alpha layer stay one graph node each (their forward is
one, masked, ReLU); BatchNorm becomes a per-channel scale and shift, folded into the
conv before it where it is that conv's only user.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from pibench.mpc.builder import batchnorm_affine, fold_affine
from pibench.mpc.program import CompileError
from pibench.relu import MaskedReLU


def has_alphas(m: nn.Module) -> bool:
    """An SNL-style layer: relu(x) * alphas + (1 - alphas) * x with per-position alphas of shape (1, C, H, W)."""
    alphas = m._parameters.get("alphas", m._buffers.get("alphas"))  # not getattr: fx patches it while tracing
    return isinstance(alphas, torch.Tensor) and alphas.dim() == 4 and alphas.shape[0] == 1


class _Tracer(torch.fx.Tracer):
    """Keeps MaskedReLU and SNL alpha layers as one node each: their forward is one (masked) ReLU."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, MaskedReLU) or has_alphas(m) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """The model's fx graph; a model fx cannot trace raises CompileError with fx's reason."""
    try:
        return torch.fx.GraphModule(model, _Tracer().trace(model))
    except (torch.fx.proxy.TraceError, TypeError, NotImplementedError) as e:
        reason = " ".join(str(e).split())
        raise CompileError(f"cannot trace {type(model).__name__} with torch.fx ({reason}); MPC needs a model "
                           "without data-dependent control flow") from e


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weight and bias with an eval-mode BatchNorm folded in."""
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
    return fold_affine(conv.weight.detach(), bias, *bn_affine(bn))


def bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = x * scale + shift per channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise CompileError(f"BatchNorm layer {bn!r} has no running statistics; MPC needs eval-mode BN")
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_mean)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(bn.running_mean)
    return batchnorm_affine(gamma, beta, bn.running_mean, bn.running_var, bn.eps)
