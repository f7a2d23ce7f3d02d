"""Augmentation multiplicity (De et al. 2022): K augmented copies of each example, their gradients averaged
*inside* the example's clip.

Each sampled image is shifted by a random offset of up to ``MAX_SHIFT`` pixels in each direction (its border
replicated, then a crop back to its size) K times, independently. The K per-copy gradients are averaged into the
example's one gradient before clipping, so an example still contributes at most C to the sum: the sampling rate,
the steps, the noise and hence the ledger are exactly those of K = 1. The transform is a per-example function (no other
example is involved), so it changes nothing in the guarantee; it only gives each example a less noisy gradient.
The average needs the per-copy gradients, so K > 1 trains with Opacus' hooks (book-keeping computes only the
clipped sum).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_SHIFT = 2


def augmented_copies(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """(B * k, C, H, W): copy j of example i at row i * k + j, each randomly shifted."""
    if x.dim() != 4:
        raise ValueError(f"augmentations need images (B, C, H, W), got a batch of shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    rep = x.repeat_interleave(k, dim=0)
    if rep.shape[0] == 0:
        return rep
    # replicate the border: normalised images have a non-zero background, which zeros would not match
    padded = F.pad(rep, (MAX_SHIFT, MAX_SHIFT, MAX_SHIFT, MAX_SHIFT), mode="replicate")
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (rep.shape[0], 2), generator=generator)
    rows = (torch.arange(h)[None, :] + offsets[:, :1]).to(x.device)  # (B*k, H)
    cols = (torch.arange(w)[None, :] + offsets[:, 1:]).to(x.device)  # (B*k, W)
    batch = torch.arange(rep.shape[0], device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B*k, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def average_copies(params: list[torch.nn.Parameter], batch: int, k: int) -> None:
    """Replace each parameter's per-copy gradients (B * k rows) by the per-example mean (B rows), before clipping."""
    for p in params:
        grad_sample = getattr(p, "grad_sample", None)
        if grad_sample is None:
            continue
        p.grad_sample = grad_sample.reshape(batch, k, *grad_sample.shape[1:]).mean(dim=1)
