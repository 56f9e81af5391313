"""interp — a hookable decoder-only transformer and the analyzers that ask why it predicts what it does."""

from interp.errors import InterpError
from interp.loading import load, zoo_models
from interp.model.config import DecoderConfig
from interp.model.memory import estimate_memory
from interp.model.transformer import HookedDecoder

__all__ = ["DecoderConfig", "HookedDecoder", "InterpError", "estimate_memory", "load", "zoo_models"]
__version__ = "0.1.0"
