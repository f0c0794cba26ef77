"""Lazy re-exports for a package's ``__init__`` (PEP 562), without torch: ``resbackbone`` and ``detection`` list
their public names with the submodule that defines each, and a submodule is imported when one of its names is
first read. Code that must run without torch (the onnxruntime predictor) can then import torch-free submodules
of either package."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, table: Mapping[str, str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public names are ``table`` (name -> submodule).

    A name is imported from its submodule on first use and cached in ``namespace`` (the package's globals); a
    submodule's own name imports it, as eager imports made ``package.submodule`` work after ``import package``.
    """

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            if not name.startswith("__"):
                try:
                    return importlib.import_module(f".{name}", package)
                except ModuleNotFoundError as e:
                    if e.name != f"{package}.{name}":
                        raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__


__all__ = ["lazy_exports"]
