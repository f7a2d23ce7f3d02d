"""Which grad-sample mode to use for a model when the config says ``grad-sample-mode = "auto"``, and why.

Every mode offered by client.training computes the same clipped gradient (bench/dp_step.py checks each
against a per-sample loop: relative error <= 2e-15 in float64, <= 1e-6 in float32), so the choice is
only about speed, and the fastest mode depends on the model: book-keeping ("bk") needs one forward and one
backward pass and never materialises per-sample gradients of Linear layers (a 784 x 128 layer at batch
256 is 25 M floats per step), but supports only Linear, Conv2d and GroupNorm layers; Opacus' hooks
support every layer Opacus knows.

A zoo model gets its measured fastest mode (``FASTEST_MODE``). Any other model (a plug-in, see
models.plugins) gets "bk" when book-keeping supports every trainable layer (client.bookkeeping
``unsupported_layers``), else "hooks" when Opacus has a per-sample gradient hook for every trainable layer
(``GradSampleModule.GRAD_SAMPLERS``), else "functorch" (torch.func computes any layer's per-sample
gradient, slower). ``choose_mode`` returns the mode with the reason in words, for the caller to print.
With a ``sample`` batch, "bk" is also tried on one step of a copy of the model: book-keeping refuses a
layer called twice per forward pass or an output changed in place, which no static look can see.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING

import torch
from opacus.grad_sample import GradSampleModule
from opacus.validators import ModuleValidator
from torch import nn

from dpfl.client.bookkeeping import BookKeepingClipper, UnsupportedLayerError, unsupported_layers
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
    "lstm": "hooks",  # the only exact mode for it: book-keeping has no Embedding or DPLSTM, ghost no DPLSTM
}



@dataclasses.dataclass(frozen=True)
class ModeChoice:
    """The grad-sample mode "auto" resolves to, and why (one line, for logs and the CLI)."""

    mode: str
    reason: str


def fastest_mode(model_name: str) -> str:
    """The fastest exact grad-sample mode for a zoo model (``DEFAULT_MODE`` for one not measured)."""
    return FASTEST_MODE.get(model_name, DEFAULT_MODE)


def model_name_of(model: nn.Module) -> str | None:
    """The zoo name of a model built by models.build_model, or None for any other module."""
    return next((name for name, cls in MODELS.items() if type(model) is cls), None)


def _names(layers: list[tuple[str, str]], limit: int = 3) -> str:
    shown = ", ".join(f"{name!r} ({what})" for name, what in layers[:limit])
    return shown + (f" and {len(layers) - limit} more" if len(layers) > limit else "")


def _without_hooks(model: nn.Module) -> list[tuple[str, str]]:
    """Trainable layers Opacus has no per-sample gradient hook for. A parameter shared by several modules
    (DPLSTM exposes its RNNLinear cells' weights) is covered when any module owning it has a hook."""
    owners: dict[int, list[nn.Module]] = {}
    names: dict[int, str] = {}
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                owners.setdefault(id(p), []).append(module)
                names.setdefault(id(p), name or type(module).__name__)
    missing: dict[str, str] = {}
    for pid, mods in owners.items():
        if not any(type(m) in GradSampleModule.GRAD_SAMPLERS for m in mods):
            missing.setdefault(names[pid], type(mods[0]).__name__)
    return list(missing.items())


def _bk_trial(model: nn.Module, sample: torch.Tensor) -> str | None:
    """None when one book-keeping step on a copy of ``model`` succeeds on ``sample``, else why not."""
    probe = copy.deepcopy(model).train()
    clipper = BookKeepingClipper(probe, 1.0)
    try:
        logits = probe(sample)
        clipper.clipped_backward(logits, torch.zeros(int(sample.shape[0]), dtype=torch.long, device=logits.device))
    except UnsupportedLayerError as exc:
        return str(exc).split(";")[0]
    except Exception as exc:  # noqa: BLE001 - a user's model may fail in ways bk cannot name
        return f"a book-keeping trial step failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
    finally:
        clipper.close()
    return None


def choose_mode(model: nn.Module, sample: torch.Tensor | None = None) -> ModeChoice:
    """The exact grad-sample mode "auto" means for ``model``, and why. Zoo models keep their measured
    choice; ``sample`` (a few inputs, e.g. ``x[:2]``) lets "bk" be tried on one step of a copy."""
    name = model_name_of(model)
    if name is not None:
        mode = fastest_mode(name)
        return ModeChoice(mode, f"zoo model {name!r}: {mode!r} is its fastest exact mode (bench/dp_step.py)")
    if not any(p.requires_grad for p in model.parameters()):
        return ModeChoice(DEFAULT_MODE, "the model has no trainable parameters")
    no_bk = unsupported_layers(model)
    failed = _bk_trial(model, sample) if not no_bk and sample is not None else None
    if not no_bk and failed is None:
        checked = "" if sample is not None else " (layer reuse and in-place outputs are checked at the first step)"
        return ModeChoice("bk", "book-keeping supports every trainable layer (Linear, Conv2d, GroupNorm): the "
                                f"fastest exact mode{checked}")
    why_not_bk = (f"book-keeping cannot clip {_names(no_bk)}" if no_bk
                  else f"book-keeping refused a trial step: {failed}")
    no_hooks = _without_hooks(model)
    if not no_hooks:
        return ModeChoice("hooks", f"{why_not_bk}; Opacus has a per-sample gradient hook for every trainable layer")
    refused = [name for name, module in model.named_modules() if type(module) in ModuleValidator.VALIDATORS
               and ModuleValidator.VALIDATORS[type(module)](module)]
    fix = (f"; Opacus' validator refuses {', '.join(map(repr, refused[:3]))}: fix the model first "
           "(models.dp_check.check_model_for_dp with fix=True)") if refused else ""
    return ModeChoice("functorch", f"{why_not_bk}; Opacus has no hook for {_names(no_hooks)}, so functorch "
                                   f"computes their per-sample gradients (slower){fix}")


def resolve_auto(settings: TrainSettings, model: nn.Module, sample: torch.Tensor | None = None) -> TrainSettings:
    """``settings`` with grad_sample_mode "auto" replaced by ``choose_mode(model, sample).mode``; any other
    mode is returned unchanged, so callers that never say "auto" are unaffected. Resolved inside
    train_locally, so every caller (ClientApp, plain loop, tests) gets the same choice."""
    if settings.grad_sample_mode != "auto":
        return settings
    return dataclasses.replace(settings, grad_sample_mode=choose_mode(model, sample).mode)
