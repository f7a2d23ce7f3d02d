"""Gradient (Dirac) canaries for a privacy audit: records whose clipped gradient is C times one coordinate's unit
vector (Steinke, Nasr & Jagielski 2023, white-box auditing).

An audit gives a client the canaries its secret coins included (never the excluded ones). They are records like
any other: the Poisson draw of every step runs over the client's real records *and* its canaries, so a canary is
sampled at exactly the rate the ledger states; a sampled canary adds its gradient to the clipped sum before the
noise, clipped to the same norm C (its norm is C, so clipping leaves it as it is). Nothing else changes: the
release, its ledger entry and the reply are those of an ordinary round. Only the book-keeping mode ("bk") can add a
gradient to the clipped sum directly; the others are refused when an audit is planned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class CanaryError(ValueError):
    """The audit's canaries do not fit this client's model or training mode."""


@dataclass(frozen=True)
class DiracCanaries:
    """This client's included gradient canaries: one (parameter name, flat index) each."""

    coordinates: tuple[tuple[str, int], ...]

    def __len__(self) -> int:
        return len(self.coordinates)

    def check(self, model: nn.Module) -> None:
        """Every coordinate names a trainable parameter of ``model`` and an index inside it, each at most once."""
        params = dict(model.named_parameters())
        if len(set(self.coordinates)) != len(self.coordinates):
            raise CanaryError("two gradient canaries share one coordinate")
        for name, index in self.coordinates:
            p = params.get(name)
            if p is None or not p.requires_grad:
                raise CanaryError(f"gradient canary coordinate {name!r} is not a trainable parameter of the model")
            if not 0 <= index < p.numel():
                raise CanaryError(f"gradient canary index {index} is outside {name!r} ({p.numel()} entries)")


def add_sampled_canaries(model: nn.Module, canaries: DiracCanaries, sampled: torch.Tensor, clip_norm: float) -> None:
    """Add the clipped gradients of the sampled canaries (``sampled``: indices into ``canaries``) to ``p.grad``,
    which holds the clipped sum of the step's real records."""
    if sampled.numel() == 0:
        return
    params = dict(model.named_parameters())
    magnitude = clip_norm  # ||C e_j|| = C: min(1, C / ||g||) = 1, the clipped gradient is the canary itself
    for k in sampled.tolist():
        name, index = canaries.coordinates[k]
        p = params[name]
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.view(-1)[index] += magnitude
