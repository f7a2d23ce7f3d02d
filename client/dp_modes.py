"""Which Opacus grad-sample mode to use for a zoo model when the config says ``grad-sample-mode = "auto"``.

Every mode offered by client.training computes the same clipped gradient (bench/dp_step.py checks each
against a per-sample loop: relative error <= 2e-15 in float64, <= 1e-6 in float32), so the choice is
only about speed, and the fastest mode depends on the model: ghost clipping never materialises
per-sample gradients of Linear layers (a 784 x 128 layer at batch 256 is 25 M floats per step), while on
conv nets it costs a second backward pass and loses to hooks.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from torch import nn

from models.zoo import MODELS

if TYPE_CHECKING:  # client.training will import this module: no import cycle at run time
    from client.training import TrainSettings

SUPPORTED_MODES = ("hooks", "functorch", "ghost")  # what client.training.train_locally builds
DEFAULT_MODE = "hooks"  # for a model not measured: works for every layer Opacus supports

# Fastest exact mode per zoo model. Figures: DP step time / non-private step time, 1 thread, median of
# 15 round-robin steps, batch 64 | 256, torch 2.13 CPU, opacus 1.6, this 2-core shared machine, from
#     python bench/dp_step.py          (writes bench/results/dp_step.json)
#   model    hooks          functorch      ghost          ew (not offered by client.training)
#   cnn      1.74 | 1.70    2.22 | 1.98    1.97 | 1.86    1.63 | 1.58
#   mlp      12.3 | 29.2    18.6 | 31.4    3.08 | 1.61    13.8 | 27.5
#   logreg   3.13 | 4.52    6.56 | 11.2    3.45 | 2.73    2.74 | 3.71
#   resnet   2.44 | 2.31    2.53 | 2.36    3.14 | 3.15    2.40 | 2.35
# An earlier run agreed on cnn, mlp and logreg; on resnet hooks, functorch and ew were within noise of
# each other (2.31 | 2.44, 2.42 | 2.15, 2.01 | 2.47), so the tie goes to hooks, the default. logreg at
# batch 64 is a tie in absolute terms (1.3 vs 1.5 ms a step); ghost wins clearly at 256.
FASTEST_MODE: dict[str, str] = {
    "cnn": "hooks",
    "mlp": "ghost",
    "logreg": "ghost",
    "resnet": "hooks",
}

def fastest_mode(model_name: str) -> str:
    """The fastest exact grad-sample mode for a zoo model (``DEFAULT_MODE`` for one not measured)."""
    return FASTEST_MODE.get(model_name, DEFAULT_MODE)


def model_name_of(model: nn.Module) -> str | None:
    """The zoo name of a model built by models.build_model, or None for any other module."""
    return next((name for name, cls in MODELS.items() if type(model) is cls), None)


def resolve_auto(settings: TrainSettings, model: nn.Module) -> TrainSettings:
    """``settings`` with grad_sample_mode "auto" replaced by the fastest mode for ``model``; any other
    mode is returned unchanged, so callers that never say "auto" are unaffected. Resolved inside
    train_locally, so every caller (ClientApp, plain loop, tests) gets the same choice."""
    if settings.grad_sample_mode != "auto":
        return settings
    name = model_name_of(model)
    chosen = fastest_mode(name) if name is not None else DEFAULT_MODE
    return dataclasses.replace(settings, grad_sample_mode=chosen)
