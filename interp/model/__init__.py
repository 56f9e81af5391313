"""The hookable decoder: config, modules and attention backends."""

from interp.model.config import DecoderConfig
from interp.model.transformer import HookedDecoder

__all__ = ["DecoderConfig", "HookedDecoder"]
