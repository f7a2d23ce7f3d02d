"""Models: the zoo (Opacus-compatible, no BatchNorm), user plug-ins by spec, and DP checks before training."""

from dpfl.models.plugins import (
    ENTRY_POINT_GROUP,
    ModelPluginError,
    ResolvedModel,
    build_model,
    check_model_spec,
    is_module_spec,
    plugin_names,
    resolve_model,
)
from dpfl.models.zoo import (
    INPUT_REQUIREMENTS,
    MODELS,
    IncompatibleInputError,
    UnknownModelError,
    check_input_shape,
)

__all__ = ["ENTRY_POINT_GROUP", "INPUT_REQUIREMENTS", "MODELS", "IncompatibleInputError", "ModelPluginError",
           "ResolvedModel", "UnknownModelError", "build_model", "check_input_shape", "check_model_spec",
           "is_module_spec", "plugin_names", "resolve_model"]
