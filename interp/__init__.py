"""interp — a hookable decoder-only transformer and the analyzers that ask why it predicts what it does.

The names below are imported on first use (PEP 562), so ``import interp`` — and ``interp --help`` — does not
pay for torch, transformers and TransformerLens until a model is actually needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from interp.errors import InterpError

__version__ = "0.1.0"

_LAZY = {
    "load": "interp.loading",
    "zoo_models": "interp.loading",
    "DecoderConfig": "interp.model.config",
    "HookedDecoder": "interp.model.transformer",
    "estimate_memory": "interp.model.memory",
}

__all__ = ["DecoderConfig", "HookedDecoder", "InterpError", "estimate_memory", "load", "zoo_models"]

if TYPE_CHECKING:  # for type checkers and IDEs
    from interp.loading import load, zoo_models
    from interp.model.config import DecoderConfig
    from interp.model.memory import estimate_memory
    from interp.model.transformer import HookedDecoder


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'interp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
