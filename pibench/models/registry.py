"""Model registry: a name maps to a builder plus the input it is built for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from pibench.registry import Registry
from pibench.relu import init_masks


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: its builder and the defaults it is meant to be built with."""

    builder: Callable[..., nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)


MODELS: Registry[ModelEntry] = Registry("model")

# Input defaults of the common datasets; builders pick one and callers may override.
CIFAR10 = dict(in_chans=3, input_size=32, num_classes=10)
CIFAR100 = dict(in_chans=3, input_size=32, num_classes=100)
TINY = dict(in_chans=3, input_size=64, num_classes=200)
DIGITS = dict(in_chans=1, input_size=8, num_classes=10)


def register_model(**defaults: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under its function name with default build arguments."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.register(fn.__name__, ModelEntry(fn, dict(defaults)))
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.names(pattern)


def model_defaults(name: str) -> dict[str, Any]:
    """The build arguments `create_model(name)` uses when the caller sets none."""
    return dict(MODELS.get(name).defaults)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model with all-True ReLU masks sized for its input.

    kwargs whose value is None are dropped, so unset CLI flags never override a
    model's defaults. The resolved arguments are kept on `model.pibench_args`, which is
    what the public model file records.
    """
    entry = MODELS.get(name)
    args = {**entry.defaults, **{k: v for k, v in kwargs.items() if v is not None}}
    input_size = args.pop("input_size")
    try:
        model = entry.builder(**args)
    except TypeError as e:
        raise TypeError(f"bad arguments for model {name!r}: {e}") from e
    init_masks(model, (args["in_chans"], input_size, input_size))
    model.pibench_arch = name
    model.pibench_args = {**args, "input_size": input_size}
    return model
