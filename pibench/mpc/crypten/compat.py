"""Make `import crypten` work on recent torch without touching site-packages.

CrypTen 0.4.1's ONNX converter imports `torch.onnx._internal.registration`, which
newer torch releases removed. pibench never uses that converter (models are
compiled from torch.fx, see `pibench.mpc.program`), so a placeholder module whose
`registry` fails loudly on use is enough. Torch versions that still have the module
are left alone.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

_MISSING = "torch.onnx._internal.registration"


class _RemovedRegistry:
    """Stands in for torch's removed ONNX symbolic registry."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            "crypten's ONNX converter (crypten.nn.from_pytorch) does not work on this torch; "
            "pibench compiles models with pibench.mpc.program instead"
        )


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def install() -> None:
    """Register the placeholder module if (and only if) torch lacks the real one."""
    if _MISSING in sys.modules or _module_exists(_MISSING):
        return
    placeholder = types.ModuleType(_MISSING)
    placeholder.registry = _RemovedRegistry()  # type: ignore[attr-defined]
    sys.modules[_MISSING] = placeholder


def import_crypten() -> types.ModuleType:
    """`import crypten`, after installing the compatibility shim."""
    install()
    import crypten

    return crypten


def use_provider(provider: Any) -> None:
    """Serve CrypTen's tuples from `provider` (under CrypTen's "TTP" name).

    CrypTen starts the third process's communication groups only when its TTP provider
    is configured, and picks the provider from a module-level table at every
    multiplication; pibench's dealer needs that third process, so its provider takes
    the TTP entry of the table (`crypten.cfg.mpc.provider` must be "TTP").
    """
    import crypten

    if crypten.cfg.mpc.provider != "TTP":
        raise RuntimeError("use_provider needs crypten.cfg.mpc.provider == 'TTP' before crypten.init()")
    vars(crypten.mpc)["__SUPPORTED_PROVIDERS"]["TTP"] = provider
