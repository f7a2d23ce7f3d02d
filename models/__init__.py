"""Model zoo: every model is Opacus-compatible (no BatchNorm; GroupNorm where normalisation helps)."""

from models.zoo import MODELS, UnknownModelError, build_model

__all__ = ["MODELS", "UnknownModelError", "build_model"]
