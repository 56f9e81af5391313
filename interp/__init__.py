"""interp — a hookable decoder-only transformer and the analyzers that ask why it predicts what it does.

The names below are imported on first use (PEP 562), so ``import interp`` — and ``interp --help`` — does not
pay for torch, transformers and TransformerLens until a model is actually needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from interp._lazy import lazy_getattr
from interp.errors import InterpError

__version__ = "0.1.0"

_LAZY = {
    "load": "interp.loading",
    "zoo_models": "interp.loading",
    "DecoderConfig": "interp.model.config",
    "HookedDecoder": "interp.model.transformer",
    "HookedTransformer": "interp.loading.tl_compat",
    "estimate_memory": "interp.model.memory",
}

__all__ = ["DecoderConfig", "HookedDecoder", "HookedTransformer", "InterpError", "estimate_memory", "load",
           "zoo_models"]

if TYPE_CHECKING:  # for type checkers and IDEs
    from interp.loading import load, zoo_models
    from interp.loading.tl_compat import HookedTransformer
    from interp.model.config import DecoderConfig
    from interp.model.memory import estimate_memory
    from interp.model.transformer import HookedDecoder


__getattr__ = lazy_getattr("interp", _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
