"""Loss and accuracy of a model on in-memory tensors (server test set, client validation split)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024,
                   device: torch.device | str = "cpu") -> tuple[float, float]:
    """(mean cross-entropy, accuracy); (nan, nan) for an empty set."""
    n = int(y.shape[0])
    if n == 0:
        return float("nan"), float("nan")
    model.to(device)
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, n, batch_size):
        xb = x[start:start + batch_size].to(device)
        yb = y[start:start + batch_size].to(device)
        logits = model(xb)
        loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(dim=1) == yb).sum())
    return loss_sum / n, correct / n
