"""pibench: private-inference benchmarking of ReLU-linearized networks.

    pibench.export(model, example_input, "models/mynet")   # any traceable torch model -> model folder
    pibench.measure("models/mynet", protocol="crypten:dealer", network="lan,wan")   # -> pandas DataFrame

`export` lives in `pibench.modelfolder.export`, `measure` in `pibench.bench`; they are
imported on first use, so that `import pibench` (and `pibench --help`) does not load torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {"export": "pibench.modelfolder.export", "measure": "pibench.bench"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pibench' has no attribute {name!r}")
