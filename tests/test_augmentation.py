"""Augmentation multiplicity: K shifted copies per example, their gradients averaged inside the example's clip, the
ledger exactly that of K = 1."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dpfl.client import augmentation, training
from dpfl.client.augmentation import augmented_copies
from dpfl.client.training import TrainSettings, poisson_batch, train_locally
from dpfl.models import build_model
from dpfl.privacy import steps_per_round

ROOT = Path(__file__).resolve().parents[1]
N, BATCH, LR, K, SEED = 20, 10, 0.5, 3, 5


def test_copies_are_shifts_of_their_example():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6) + 1
    out = augmented_copies(x, 4, torch.Generator().manual_seed(0))
    assert out.shape == (8, 1, 6, 6)
    for i in range(8):
        src = x[i // 4, 0]
        found = any(torch.equal(out[i, 0][max(0, -dr):6 - max(0, dr), max(0, -dc):6 - max(0, dc)],
                                src[max(0, dr):6 + min(0, dr), max(0, dc):6 + min(0, dc)])
                    for dr in range(-2, 3) for dc in range(-2, 3))
        assert found, i  # copy i is its example moved by at most 2 pixels
    assert len({tuple(out[i].flatten().tolist()) for i in range(4)}) > 1  # copies differ


def _settings(k: int) -> TrainSettings:
    return TrainSettings(local_epochs=1, batch_size=BATCH, learning_rate=LR, momentum=0.0, optimizer="sgd", dp=True,
                         noise_multiplier=0.0, max_grad_norm=0.0, grad_sample_mode="hooks", augmentations=k)


def _change(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: TrainSettings) -> torch.Tensor:
    model = copy.deepcopy(model)
    before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    out = train_locally(model, x, y, settings, sampling_generator=torch.Generator().manual_seed(SEED),
                        noise_generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    assert (out.sample_rate, out.steps) == steps_per_round(N, BATCH, 1)  # the release of K = 1
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - before


def _scaled_copies(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """A known per-example transform for the reference: copy j is the example times (1 + j / 2)."""
    return torch.cat([x[i:i + 1] * (1 + j / 2) for i in range(x.shape[0]) for j in range(k)]) if x.shape[0] else \
        x.repeat_interleave(k, dim=0)


def test_the_copies_gradients_are_averaged_before_the_clip(monkeypatch):
    torch.manual_seed(0)
    model = build_model("mlp", (1, 6, 6), 3).to(torch.float64)
    x, y = torch.randn(N, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (N,))
    clip = 0.3
    monkeypatch.setattr(training, "augmented_copies", _scaled_copies)
    got = _change(model, x, y, TrainSettings(**{**_settings(K).__dict__, "max_grad_norm": clip}))
    # the textbook algorithm: per example, the mean of its K copies' gradients, clipped to C, summed, / (q N)
    ref_model = copy.deepcopy(model)
    before = torch.cat([p.detach().reshape(-1).clone() for p in ref_model.parameters()])
    q, steps = steps_per_round(N, BATCH, 1)
    gen = torch.Generator().manual_seed(SEED)
    params = list(ref_model.parameters())
    for _ in range(steps):
        idx = poisson_batch(N, q, gen)
        total = [torch.zeros_like(p) for p in params]
        for i in idx.tolist():
            copies = _scaled_copies(x[i:i + 1], K, gen)
            grads = [torch.autograd.grad(nn.functional.cross_entropy(ref_model(copies[j:j + 1]), y[i:i + 1]), params)
                     for j in range(K)]
            mean = [sum(g[t] for g in grads) / K for t in range(len(params))]
            norm = math.sqrt(sum(float(m.pow(2).sum()) for m in mean))
            for t, m in enumerate(mean):
                total[t] += m * min(1.0, clip / (norm + 1e-6))
        with torch.no_grad():
            for p, t in zip(params, total, strict=True):
                p -= LR * t / (q * N)
    ref = torch.cat([p.detach().reshape(-1) for p in params]) - before
    assert float((got - ref).norm() / ref.norm()) < 1e-6


def test_identical_copies_train_exactly_like_one(monkeypatch):
    torch.manual_seed(1)
    model = build_model("mlp", (1, 6, 6), 3).to(torch.float64)
    x, y = torch.randn(N, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (N,))
    one = _change(model, x, y, TrainSettings(**{**_settings(1).__dict__, "max_grad_norm": 0.3}))
    monkeypatch.setattr(augmentation, "MAX_SHIFT", 0)
    monkeypatch.setattr(training, "augmented_copies", lambda xb, k, g: xb.repeat_interleave(k, dim=0))
    four = _change(model, x, y, TrainSettings(**{**_settings(4).__dict__, "max_grad_norm": 0.3}))
    assert float((one - four).norm() / one.norm()) < 1e-9


def test_the_ledger_is_that_of_one_copy(tmp_path: Path):
    ledgers = {}
    for k in ("1", "3"):
        proc = subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", "simulate", "--preset", "quick",
                               "--num-server-rounds", "2", "--augmentations", k, "--run-dir", str(tmp_path),
                               "--run-name", f"k{k}"], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        ledgers[k] = [{f: json.loads(line)[f] for f in ("round", "noise_multiplier", "sample_rate", "steps",
                                                         "epsilon", "declared_records")}
                      for c in range(3) for line in (tmp_path / f"k{k}" / "ledgers" / f"client-{c:03d}.jsonl")
                      .read_text().splitlines()]
    assert ledgers["1"] == ledgers["3"] and len(ledgers["1"]) == 6


def test_augmentations_on_non_images_are_refused(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", "simulate", "--dataset", "synthetic",
                           "--model", "mlp", "--augmentations", "2", "--run-dir", str(tmp_path), "--run-name", "x"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "shifts images" in proc.stderr


@pytest.mark.parametrize("k", [2, 4])
def test_k_copies_keep_the_release(k):
    torch.manual_seed(2)
    model = build_model("mlp", (1, 8, 8), 10)
    x, y = torch.randn(N, 1, 8, 8), torch.randint(0, 10, (N,))
    s = TrainSettings(**{**_settings(k).__dict__, "max_grad_norm": 1.0, "noise_multiplier": 1.0,
                         "grad_sample_mode": "bk"})
    out = train_locally(model, x, y, s, sampling_generator=torch.Generator().manual_seed(SEED),
                        noise_generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    assert (out.sample_rate, out.steps) == steps_per_round(N, BATCH, 1)
