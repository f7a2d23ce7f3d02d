"""Dropout for any model, added without changing its parameters: the run config's ``dropout``.

Dropout is part of the model, so under DP it costs nothing: each example's forward pass (and so its gradient, clipped
and noised as usual) simply uses a random mask. It is added as a forward hook on every activation module, so the
model's state dict (the weights the server sends and averages) is the same with or without it, and in eval mode
(the server's test accuracy, ``dpfl predict``) the model is unchanged. Weight decay, the other regulariser, is the
optimizer's (client/training.py): it adds ``weight_decay * w`` to the already noised gradient, post-processing.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.GELU, nn.ELU, nn.SiLU, nn.LeakyReLU, nn.Sigmoid, nn.Softplus, nn.Mish)


class DropoutError(ValueError):
    """The model has no activation module to put dropout after; the message says what to do."""


def dropout_targets(model: nn.Module, p: float) -> list[nn.Module]:
    """The activation modules dropout ``p`` would follow (none for p = 0); DropoutError when there are none.
    Changes nothing, so a check before training can use the very model it checks."""
    if not 0 <= p < 1:
        raise DropoutError(f"dropout must be in [0, 1), got {p}")
    if p == 0:
        return []
    targets = [m for m in model.modules() if isinstance(m, ACTIVATIONS)]
    if not targets:
        names = ", ".join(a.__name__ for a in ACTIVATIONS[:4])
        raise DropoutError(f"dropout = {p}: the model has no activation module ({names}, ...) to drop after; put "
                           "dropout layers in the model itself and set dropout = 0")
    return targets


def add_dropout(model: nn.Module, p: float) -> int:
    """Drop each activation's outputs with probability ``p`` while training; returns how many activations got it."""
    targets = dropout_targets(model, p)
    for module in targets:
        module.register_forward_hook(lambda m, _inputs, out: F.dropout(out, p, m.training))
    return len(targets)
