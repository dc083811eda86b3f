"""Names a package exports but imports only on first use (PEP 562), so importing the package is cheap.

``engine`` and ``trainer`` use it: ``deeplab-gui --help`` must not wait for torch.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, namespace: dict[str, Any], exports: dict[str, tuple[str, ...]],
                 ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` whose ``exports`` map a module to its names.

    A module is relative to the package (``"store"``) or absolute when dotted (``"engine.store.versions"``).
    A name, once looked up, is kept in ``namespace`` (the package's globals) like a plain import.
    """
    where = {name: mod for mod, names in exports.items() for name in names}
    names = sorted(where)

    def getattr_(name: str) -> Any:
        mod = where.get(name)
        if mod is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(mod if "." in mod else f".{mod}", package), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(list(namespace) + names)

    return names, getattr_, dir_
