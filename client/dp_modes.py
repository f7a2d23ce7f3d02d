"""Which Opacus grad-sample mode to use for a zoo model when the config says ``grad-sample-mode = "auto"``.

Every mode offered by client.training computes the same clipped gradient (bench/dp_step.py checks each
against a per-sample loop: relative error <= 2e-15 in float64, <= 1e-6 in float32), so the choice is
only about speed, and the fastest mode depends on the model: book-keeping ("bk") needs one forward and one
backward pass and never materialises per-sample gradients of Linear layers (a 784 x 128 layer at batch
256 is 25 M floats per step), but supports only Linear, Conv2d and GroupNorm layers; Opacus' hooks
support every layer Opacus knows.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from torch import nn

from dpfl.models.zoo import MODELS

if TYPE_CHECKING:  # client.training will import this module: no import cycle at run time
    from dpfl.client.training import TrainSettings

SUPPORTED_MODES = ("bk", "hooks", "functorch", "ghost")  # what client.training.train_locally builds
DEFAULT_MODE = "hooks"  # for a model not measured: works for every layer Opacus supports

# Fastest exact mode per zoo model. Figures: DP step time / non-private step time, 1 thread, median of
# 15 round-robin steps, batch 64 | 256, torch 2.13 CPU, opacus 1.6, this 2-core shared machine, from
#     python bench/dp_step.py          (writes bench/results/dp_step.json)
#   model    bk             hooks          functorch      ghost          ew (not offered by client.training)
#   cnn      1.32 | 1.33    1.73 | 1.69    2.14 | 1.90    1.93 | 1.81    1.63 | 1.61
#   mlp      1.77 | 1.45    9.21 | 45.4    11.9 | 48.1    3.00 | 2.31    15.7 | 43.7
#   logreg   2.20 | 1.39    3.58 | 4.17    6.31 | 6.21    3.69 | 2.71    3.25 | 3.54
#   resnet   2.27 | 2.41    2.42 | 2.26    2.46 | 2.19    3.13 | 3.12    2.44 | 2.31
# bk (client/bookkeeping.py) wins clearly wherever the layers are Linear and Conv2d. On resnet every mode
# but ghost is within noise of the others (GroupNorm needs one more normalisation pass in bk), so the tie
# goes to hooks, the default; an earlier run had hooks, functorch and ew in a different order.
FASTEST_MODE: dict[str, str] = {
    "cnn": "bk",
    "mlp": "bk",
    "logreg": "bk",
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
