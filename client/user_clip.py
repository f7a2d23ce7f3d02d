"""User-level DP on the client's side: clip the whole model update to L2 norm C before it leaves.

Under ``privacy-unit = client`` the server adds noise calibrated to C to the sum of updates (server/
user_level.py); that is only a guarantee for this client if its own update is at most C long, so the clip
happens here, on the owner's machine: an unclipped update never leaves. The norm is one L2 norm over every
floating tensor of the model (the update is one vector), and tensors that are not floating (counters) are
sent back exactly as received, so they carry nothing about the records.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch


def update_norm(incoming: dict[str, torch.Tensor], trained: dict[str, torch.Tensor]) -> float:
    """The L2 norm of trained - incoming over every floating tensor, in float64."""
    total = 0.0
    for key, before in incoming.items():
        if before.is_floating_point():
            diff = trained[key].detach().to("cpu", torch.float64) - before.detach().to("cpu", torch.float64)
            total += float(torch.sum(diff * diff))
    return math.sqrt(total)


def clip_update(incoming: dict[str, torch.Tensor], trained: dict[str, torch.Tensor],
                clip_norm: float) -> tuple[OrderedDict[str, torch.Tensor], bool]:
    """(incoming + min(1, C / ||delta||) * delta, whether ||delta|| <= C). ``trained`` must have the incoming
    model's keys and shapes (the server's reply checks refuse anything else)."""
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip norm {clip_norm!r} is not valid: expected a finite number > 0")
    if set(trained) != set(incoming):
        raise ValueError("the trained model's tensors are not the received model's")
    norm = update_norm(incoming, trained)
    if not math.isfinite(norm):
        raise ValueError("the local update is not finite (training diverged); nothing is sent")
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, before in incoming.items():
        if not before.is_floating_point():
            out[key] = before.detach().clone()
            continue
        b64 = before.detach().to("cpu", torch.float64)
        clipped = b64 + scale * (trained[key].detach().to("cpu", torch.float64) - b64)
        out[key] = clipped.to(before.dtype)
    return out, norm <= clip_norm
