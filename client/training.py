"""Local training: DP-SGD with Poisson sampling at a rate we control, or plain SGD on the same path.

We do not use Opacus' ``make_private``: it sets the sampling rate to ``1 / len(loader)``, draws
its own batches and owns the accountant. Here the sampling rate ``q = batch / declared records``
and the number of steps are fixed before training from public quantities, each step draws its
batch by Poisson sampling at exactly ``q`` from our own random source, and Opacus provides what it
is best at: per-sample gradients, clipping and noise (``GradSampleModule`` / ghost clipping and
``DPOptimizer``). Mode "bk" clips with our book-keeping pass (client.bookkeeping, same result, less work)
and still takes its noise from Opacus' optimizer. The ledger therefore records exactly the mechanism
that ran. Sampling and noise come from ``client.randomness.dp_generators``: the AES-CTR CSPRNG
(privacy.secure_random) by default, for which the optimizer is Opacus' own with only ``add_noise``
drawing from the CSPRNG; seeded torch generators in deterministic (NOT PRIVATE) test runs.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass

import torch
from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer  # noqa: F401  (tests patch training.DPOptimizer.step)
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from torch import nn

from dpfl.client.augmentation import augmented_copies, average_copies
from dpfl.client.bookkeeping import BookKeepingClipper
from dpfl.client.canaries import CanaryError, DiracCanaries, add_sampled_canaries
from dpfl.client.dp_modes import resolve_auto
from dpfl.client.randomness import RandomSource, dp_optimizer, uniform
from dpfl.privacy import steps_per_round


@dataclass(frozen=True)
class TrainSettings:
    local_epochs: int
    batch_size: int
    learning_rate: float
    momentum: float
    optimizer: str  # "sgd" | "adam"
    dp: bool
    noise_multiplier: float
    max_grad_norm: float
    grad_sample_mode: str  # "bk" | "hooks" | "functorch" | "ghost" (or "auto", resolved per model)
    weight_decay: float = 0.0  # the optimizer's L2 term, added to the noised gradient: post-processing
    augmentations: int = 1  # K > 1: augmentation multiplicity (client/augmentation.py), trained with hooks


@dataclass(frozen=True)
class TrainOutcome:
    sample_rate: float
    steps: int
    examples_seen: int  # private: never sent unless private metrics are on
    mean_loss: float  # private: idem


def _base_optimizer(params, settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    return torch.optim.SGD(params, lr=settings.learning_rate, momentum=settings.momentum,
                           weight_decay=settings.weight_decay)


def poisson_batch(n: int, sample_rate: float, generator: RandomSource) -> torch.Tensor:
    """Indices of one Poisson-sampled batch: each record independently with probability q.

    ``generator`` is a ``SecureRandom`` (the default, see client.randomness) or a seeded torch generator."""
    if sample_rate >= 1.0:
        return torch.arange(n)
    return torch.nonzero(uniform(generator, n) < sample_rate, as_tuple=False).squeeze(1)


def train_locally(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: TrainSettings, *,
                  sampling_generator: RandomSource, noise_generator: RandomSource,
                  device: torch.device, declared_records: int | None = None,
                  canaries: DiracCanaries | None = None) -> TrainOutcome:
    """Run one round of local training in place on ``model`` (which must be a fresh module).

    The schedule (q, steps) comes from ``privacy.steps_per_round`` - the same function the
    server and the accountant use - so what runs is exactly what the ledger says. It is computed from
    ``declared_records`` (the client's public N) when given, else from the true record count; the
    expected batch size that divides the noised sum is q times that same count. The two sources are
    what ``client.randomness.dp_generators`` returns (a SecureRandom each, or seeded torch generators).
    ``canaries`` (an audit, client.canaries): gradient canaries drawn with the records, index n onward.
    """
    settings = resolve_auto(settings, model)
    k = max(int(settings.augmentations), 1)
    if k > 1 and settings.dp and settings.grad_sample_mode in ("bk", "ghost"):  # the average needs per-copy grads
        settings = dataclasses.replace(settings, grad_sample_mode="hooks")
    augment_rng = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little")) if k > 1 else None
    n = int(y.shape[0])
    if canaries is not None and len(canaries):
        if not settings.dp or settings.grad_sample_mode != "bk":
            raise CanaryError("gradient canaries need DP training in grad-sample-mode 'bk' (got "
                              f"dp={settings.dp}, mode {settings.grad_sample_mode!r})")
        canaries.check(model)
    else:
        canaries = None
    population = n + (len(canaries) if canaries is not None else 0)
    schedule_records = n if declared_records is None else int(declared_records)
    sample_rate, steps = steps_per_round(schedule_records, settings.batch_size, settings.local_epochs)
    model.to(device)
    model.train()
    criterion = nn.CrossEntropyLoss(reduction="mean")
    expected_batch = sample_rate * schedule_records
    dp_kwargs = {"noise_multiplier": settings.noise_multiplier, "max_grad_norm": settings.max_grad_norm,
                 "expected_batch_size": expected_batch, "loss_reduction": "mean", "noise_source": noise_generator}

    clipper: BookKeepingClipper | None = None
    if settings.dp and settings.grad_sample_mode == "bk":
        clipper = BookKeepingClipper(model, settings.max_grad_norm)
        module = model
        optimizer = dp_optimizer(_base_optimizer(model.parameters(), settings), fast_gradient_clipping=True,
                                 **dp_kwargs)
        loss_fn = criterion
    elif settings.dp and settings.grad_sample_mode == "ghost":
        module = GradSampleModuleFastGradientClipping(model, loss_reduction="mean",
                                                      max_grad_norm=settings.max_grad_norm,
                                                      use_ghost_clipping=True)
        optimizer = dp_optimizer(_base_optimizer(module.parameters(), settings), fast_gradient_clipping=True,
                                 **dp_kwargs)
        loss_fn = DPLossFastGradientClipping(module, optimizer, criterion, loss_reduction="mean")
    elif settings.dp:
        module = GradSampleModule(model, loss_reduction="mean",
                                  force_functorch=settings.grad_sample_mode == "functorch")
        optimizer = dp_optimizer(_base_optimizer(module.parameters(), settings), fast_gradient_clipping=False,
                                 **dp_kwargs)
        loss_fn = criterion
    else:
        module = model
        optimizer = _base_optimizer(model.parameters(), settings)
        loss_fn = criterion

    total_loss, seen = 0.0, 0
    warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
    try:
        for _ in range(steps):
            idx = poisson_batch(population, sample_rate, sampling_generator)
            if canaries is not None:  # indices n onward are canaries, not records
                sampled_canaries, idx = idx[idx >= n] - n, idx[idx < n]
            xb, yb = x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            if yb.numel() == 0 and not settings.dp:
                continue  # nothing to learn from, and no noise to add without DP
            if clipper is not None:  # p.grad = clipped sum; the optimizer adds noise and divides by q * n
                loss = clipper.clipped_backward(module(xb), yb) / max(int(yb.numel()), 1)
                if canaries is not None:
                    add_sampled_canaries(module, canaries, sampled_canaries, settings.max_grad_norm)
            elif augment_rng is not None:  # K shifted copies per example, gradients averaged before the clip
                loss = loss_fn(module(augmented_copies(xb, k, augment_rng)), yb.repeat_interleave(k))
                loss.backward()
                if settings.dp:
                    average_copies([p for p in module.parameters() if p.requires_grad], int(yb.numel()), k)
            else:
                loss = loss_fn(module(xb), yb)
                loss.backward()
            optimizer.step()
            if yb.numel():
                total_loss += float(loss.detach()) * int(yb.numel())
                seen += int(yb.numel())
    finally:
        if clipper is not None:
            clipper.close()
        elif settings.dp:
            module._close()  # removes Opacus hooks so the plain module is left behind
    return TrainOutcome(sample_rate=sample_rate, steps=steps, examples_seen=seen,
                        mean_loss=total_loss / max(seen, 1))
