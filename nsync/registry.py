"""Named plug-in points: probe types, pairings, judge backends, model sources and turn-taking policies.

Each kind of plug-in has a :class:`Registry`; an implementation registers itself under a name
with the registry's decorator, and config keys choose it by that name (``probe=``,
``data.pairing=``, ``backend=``, a model name). The code that uses a kind only ever calls
``REGISTRY.get(name)``, so a new one is one file plus a registration (``docs/extending.md``).

>>> colours = Registry("colour")
>>> @colours.register("red")
... class Red:
...     pass
>>> colours.get("red") is Red, colours.names()
(True, ['red'])
>>> colours.get("blue")
Traceback (most recent call last):
...
nsync.errors.NsyncError: unknown colour 'blue'; registered: red
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from nsync.errors import NsyncError

T = TypeVar("T")


class Registry(Generic[T]):
    """Implementations of one plug-in kind, by name, in registration order."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, replace: bool = False) -> Callable[[T], T]:
        """Decorator: register the decorated class or function under ``name``."""

        def add(item: T) -> T:
            if name in self._items and not replace:
                raise ValueError(f"a {self.kind} named '{name}' is already registered (pass replace=True to override it)")
            self._items[name] = item
            return item

        return add

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise NsyncError(f"unknown {self.kind} '{name}'; registered: {', '.join(self._items)}")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def values(self) -> list[T]:
        """The registered implementations, in registration order."""
        return list(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items
