"""Stable names under which classes are stored: event types and aggregate types.

A stored name must lead back to exactly one class. The same class defined again (a module
reloaded, or ``dataclass(slots=True)`` rebuilding it) takes over its name; a different class
claiming it is refused, because stored data would then be read by the wrong code.
"""

from __future__ import annotations

from typing import Generic, TypeVar

ClassT = TypeVar("ClassT", bound=type)


class StableNames(Generic[ClassT]):
    """Classes by stable name. ``kind`` ("event type") and ``keyword`` (the class keyword that
    renames) go into the error, which is raised as ``error``."""

    def __init__(self, kind: str, keyword: str, error: type[Exception]) -> None:
        self._kind = kind
        self._keyword = keyword
        self._error = error
        self._classes: dict[str, ClassT] = {}

    def claim(self, name: str, cls: ClassT) -> None:
        """Give ``name`` to ``cls``, or raise if another class already has it."""
        existing = self._classes.get(name)
        if existing is not None and (existing.__module__, existing.__qualname__) != (
            cls.__module__,
            cls.__qualname__,
        ):
            raise self._error(
                f"{self._kind} {name!r} is already used by {existing.__module__}."
                f"{existing.__qualname__}; give {cls.__module__}.{cls.__qualname__} another"
                f" name with the {self._keyword}= class keyword"
            )
        self._classes[name] = cls

    def get(self, name: str) -> ClassT | None:
        return self._classes.get(name)
