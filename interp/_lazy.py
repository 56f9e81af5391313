"""PEP 562 lazy attributes for packages whose names live in heavy modules (torch, transformers)."""

from __future__ import annotations

import importlib


def lazy_getattr(package: str, names: dict[str, str], namespace: dict):
    """A module ``__getattr__`` importing ``names[name]`` on first use and caching it in ``namespace``."""

    def __getattr__(name: str):
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
