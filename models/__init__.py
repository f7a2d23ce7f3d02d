"""Model zoo: every model is Opacus-compatible (no BatchNorm; GroupNorm where normalisation helps)."""

from dpfl.models.zoo import (
    INPUT_REQUIREMENTS,
    MODELS,
    IncompatibleInputError,
    UnknownModelError,
    build_model,
    check_input_shape,
)

__all__ = ["INPUT_REQUIREMENTS", "MODELS", "IncompatibleInputError", "UnknownModelError", "build_model",
           "check_input_shape"]
