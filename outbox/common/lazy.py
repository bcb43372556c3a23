"""Public names a package exports lazily (PEP 562).

The packages' public names need their Django models, which cannot be imported while Django is
still loading ``INSTALLED_APPS``; a module-level ``__getattr__`` imports them on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, modules: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports each name in ``modules`` (public
    name -> the module that defines it) when it is first read."""

    def __getattr__(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__
