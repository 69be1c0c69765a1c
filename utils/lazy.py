"""Lazy exports of a package: its public names are imported from their home modules on first
use (PEP 562), so that importing one light submodule does not import the heavy ones (PyTorch)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, homes: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package's ``__init__``.

    Args:
        package: the package's name (for error messages).
        homes: public name -> the module that defines it.
    """

    def getattr_(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(homes[name]), name)

    def dir_() -> list[str]:
        return sorted(homes)

    return getattr_, dir_
