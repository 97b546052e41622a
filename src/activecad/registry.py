"""Named registries for heuristics, models and dataset readers.

Registration is explicit (a decorator at the definition), duplicates are rejected, and a
wrong name lists the valid ones with the nearest suggestion.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from activecad.errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to objects of one kind.

    Example:
        >>> HEURISTICS: Registry[type] = Registry("heuristic")
        >>> @HEURISTICS.register("random")
        ... class Random: ...
        >>> HEURISTICS.get("random") is Random
        True
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Return a decorator that registers its target under ``name``."""

        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Look ``name`` up; an unknown name raises InputError naming the valid ones."""
        try:
            return self._items[name]
        except KeyError:
            raise InputError(unknown_name_message(self.kind, name, self._items)) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def unknown_name_message(kind: str, name: str, valid: object) -> str:
    """A message for an unknown option: the valid ones and, if any is close, a suggestion."""
    names = sorted(str(v) for v in valid)  # type: ignore[attr-defined]
    message = f"unknown {kind} {name!r}; valid: {', '.join(names)}"
    close = difflib.get_close_matches(name, names, n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    return message
