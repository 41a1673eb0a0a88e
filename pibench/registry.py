"""A name -> object registry with helpful errors, one instance per kind of thing."""

from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Generic, Iterator, TypeVar

from pibench.errors import UnknownName

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (builders, methods, profiles); unknown names list the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def decorator(self, name: str | None = None) -> Callable[[T], T]:
        """Register a function under its own name (or `name`)."""

        def wrap(fn: T) -> T:
            return self.register(name or fn.__name__, fn)

        return wrap

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UnknownName(self.unknown_message(name))
        return self._items[name]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self._items, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._items))}"

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
