"""client.training's per-sample clipping is exact in every grad-sample mode.

train_locally itself runs (sigma = 0, plain SGD, momentum 0, float64) and its parameter change is
compared with a per-sample loop that replays the same Poisson batches: each example's gradient clipped to
C, summed, divided by the expected batch size q * n (not the realised one), one SGD step per batch. C is
the median per-sample norm at the start, so both the clipped and the unclipped branch are exercised.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from dpfl.client.dp_modes import DEFAULT_MODE, FASTEST_MODE, SUPPORTED_MODES, fastest_mode, resolve_auto
from dpfl.client.training import TrainSettings, poisson_batch, train_locally
from dpfl.models import build_model
from dpfl.models.zoo import MODELS
from dpfl.privacy import steps_per_round

N, BATCH, LR, SEED = 24, 16, 0.5, 7  # q = 2/3, 2 steps per round: two Poisson batches of varying size
OPACUS_NORM_EPS = 1e-6  # Opacus clips with C / (||g|| + 1e-6); checked against both that and C / ||g||
TOL = 1e-6


def _per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[list[torch.Tensor]]:
    params = list(model.parameters())
    return [list(torch.autograd.grad(nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), params))
            for i in range(x.shape[0])]


def _norm(grads: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads))


def _reference_change(model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_grad_norm: float,
                      norm_eps: float) -> torch.Tensor:
    """Parameter change of the textbook algorithm on the batches train_locally draws."""
    model = copy.deepcopy(model)
    before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    q, steps = steps_per_round(N, BATCH, 1)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(steps):
        idx = poisson_batch(N, q, gen)
        per_sample = _per_sample_grads(model, x[idx], y[idx])
        with torch.no_grad():
            for j, p in enumerate(model.parameters()):
                clipped = sum(g[j] * min(1.0, max_grad_norm / (_norm(g) + norm_eps)) for g in per_sample)
                p -= LR * clipped / (q * N)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - before


def _train_locally_change(model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_grad_norm: float,
                          mode: str) -> torch.Tensor:
    model = copy.deepcopy(model)
    before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    settings = TrainSettings(local_epochs=1, batch_size=BATCH, learning_rate=LR, momentum=0.0, optimizer="sgd",
                             dp=True, noise_multiplier=0.0, max_grad_norm=max_grad_norm, grad_sample_mode=mode)
    train_locally(model, x, y, settings, sampling_generator=torch.Generator().manual_seed(SEED),
                  noise_generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - before


@pytest.fixture(scope="module", params=["cnn", "mlp"])
def setup(request: pytest.FixtureRequest) -> dict:
    torch.manual_seed(0)
    model = build_model(request.param, (1, 28, 28), 10).to(torch.float64)
    x, y = torch.randn(N, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (N,))
    norms = sorted(_norm(g) for g in _per_sample_grads(model, x, y))
    max_grad_norm = (norms[N // 2 - 1] + norms[N // 2]) / 2
    refs = {eps: _reference_change(model, x, y, max_grad_norm, eps) for eps in (OPACUS_NORM_EPS, 0.0)}
    return {"model": model, "x": x, "y": y, "C": max_grad_norm, "norms": norms, "refs": refs}


@pytest.mark.parametrize("mode", SUPPORTED_MODES)
def test_train_locally_clips_exactly(setup: dict, mode: str) -> None:
    assert setup["norms"][0] < setup["C"] < setup["norms"][-1]  # both branches of the clip are used
    got = _train_locally_change(setup["model"], setup["x"], setup["y"], setup["C"], mode)
    for eps, ref in setup["refs"].items():
        assert float(ref.norm()) > 0
        err = float((got - ref).norm() / ref.norm())
        assert err <= TOL, f"{mode}: relative error {err:.2e} against the per-sample loop (norm eps {eps})"


def test_fastest_mode_covers_the_zoo() -> None:
    assert set(FASTEST_MODE) == set(MODELS)  # a new zoo model needs a measurement (bench/dp_step.py)
    assert all(fastest_mode(name) in SUPPORTED_MODES for name in MODELS)
    assert fastest_mode("not-a-model") == DEFAULT_MODE


def test_resolve_auto() -> None:
    settings = TrainSettings(local_epochs=1, batch_size=BATCH, learning_rate=LR, momentum=0.0, optimizer="sgd",
                             dp=True, noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode="auto")
    for name in MODELS:
        shape = {"resnet": (3, 32, 32), "lstm": (48,)}.get(name, (1, 28, 28))
        assert resolve_auto(settings, build_model(name, shape, 10)).grad_sample_mode == FASTEST_MODE[name]
    assert resolve_auto(settings, nn.Linear(3, 2)).grad_sample_mode == "bk"  # not zoo, but bk supports it
    explicit = TrainSettings(**{**settings.__dict__, "grad_sample_mode": "functorch"})
    assert resolve_auto(explicit, build_model("mlp", (1, 28, 28), 10)) is explicit
