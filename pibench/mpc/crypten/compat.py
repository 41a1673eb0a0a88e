"""Make `import crypten` work on recent torch without touching site-packages, and scope its configuration.

CrypTen 0.4.1's ONNX converter imports `torch.onnx._internal.registration`, which
newer torch releases removed. pibench never uses that converter (models are
compiled from torch.fx, see `pibench.mpc.program`), so a placeholder module whose
`registry` fails loudly on use is enough. Torch versions that still have the module
are left alone. Modules that use CrypTen get it from `import_crypten()`, never by a bare
`import crypten`, so the shim is in place whichever module is imported first.

CrypTen reads its session from `crypten.cfg` and environment variables; `crypten_session`
sets both for one party's session and restores them after, so nothing of one session
leaks into the next (or into the process that ran it, e.g. a test).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types
from typing import Any, Iterator

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


@contextlib.contextmanager
def crypten_session(rendezvous: str, rank: int, *, provider: str) -> Iterator[types.ModuleType]:
    """CrypTen configured for one two-party session over gloo at `rendezvous` (not yet initialised).

    `provider` is CrypTen's tuple provider: "TTP" (CrypTen then also sets up the third
    process's groups; pibench's dealer serves it, see `use_provider`) or "TFP". The
    environment, `crypten.cfg` and the provider table are restored on exit.
    """
    crypten = import_crypten()
    env = {"RENDEZVOUS": rendezvous, "WORLD_SIZE": "2", "RANK": str(rank), "DISTRIBUTED_BACKEND": "gloo"}
    saved_env = {k: os.environ.get(k) for k in env}
    saved_cfg = (crypten.cfg.mpc.provider, crypten.cfg.communicator.verbose)
    providers = vars(crypten.mpc)["__SUPPORTED_PROVIDERS"]
    saved_providers = dict(providers)
    os.environ.update(env)
    crypten.cfg.mpc.provider = provider
    crypten.cfg.communicator.verbose = True  # CrypTen counts bytes and rounds only when verbose
    try:
        yield crypten
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        crypten.cfg.mpc.provider, crypten.cfg.communicator.verbose = saved_cfg
        providers.clear()
        providers.update(saved_providers)


def use_provider(provider: Any) -> None:
    """Serve CrypTen's tuples from `provider` (under CrypTen's "TTP" name).

    CrypTen starts the third process's communication groups only when its TTP provider
    is configured, and picks the provider from a module-level table at every
    multiplication; pibench's dealer needs that third process, so its provider takes
    the TTP entry of the table (`crypten.cfg.mpc.provider` must be "TTP").
    """
    crypten = import_crypten()
    if crypten.cfg.mpc.provider != "TTP":
        raise RuntimeError("use_provider needs crypten.cfg.mpc.provider == 'TTP' before crypten.init()")
    vars(crypten.mpc)["__SUPPORTED_PROVIDERS"]["TTP"] = provider
