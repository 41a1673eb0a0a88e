"""What a MODEL argument names: a model folder or a registry name, checked before any work.

Commands check every model they are given before a party starts or a file is written,
so a typo costs a second, not a measurement. The path checks import nothing heavy;
only an existing folder is loaded (its public part).
"""

from __future__ import annotations

from pathlib import Path

from pibench.errors import UsageError

CARD_FILE = "model.json"  # pibench.modelfolder.folder.CARD_FILE, without importing torch


def looks_like_path(spec: str) -> bool:
    """A spec the user meant as a folder: it has a separator, a leading dot or a suffix."""
    return "/" in spec or spec.startswith(".") or bool(Path(spec).suffix)


def check_model(spec: str, *, weights: bool = True) -> None:
    """Raise one line unless `spec` is a registry name or a loadable model folder.

    A folder's public part is loaded (card, masks, ReLU counts); `weights` asks only that
    the weights file is there (it is read and checked when the model is measured).
    """
    path = Path(spec)
    if path.is_dir() and not (path / CARD_FILE).is_file():
        raise UsageError(f"{spec}: folder has no {CARD_FILE}; it is not a pibench model folder")
    if not path.exists() and looks_like_path(spec):
        raise UsageError(f"{spec}: no such model folder")
    if path.is_dir():
        from pibench.modelfolder.folder import WEIGHTS_FILE
        from pibench.modelfolder.spec import public_program

        public_program(spec)
        if weights and not (path / WEIGHTS_FILE).is_file():
            raise UsageError(f"{path / WEIGHTS_FILE}: no such file; the server needs the model's weights")
        return
    from pibench.models import MODELS

    MODELS.get(spec)
