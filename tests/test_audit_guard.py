"""The audit as a guard: white-box Dirac canaries through the real local DP-SGD step (client.training) must expose
a broken mechanism and must never exceed the claimed epsilon on the honest one.

The claimed mechanism: q = 200 / 2000 = 0.1, 100 steps, sigma calibrated to epsilon = 2 at delta = 1e-5 (PLD,
add/remove). m = 2000 canaries, each included by a fair coin, live on the weights of 200 input features that are
zero in every real record, so no real gradient touches them. The auditor sees the released update only (the end
of the round, as the server does), scores each canary by the exact likelihood ratio of the *claimed* mechanism and
guesses "in" for the 200 highest scores, a number fixed here before any score exists. Measured on the simulated
mechanism (privacy/audit/scores.py), 20 runs each: honest bounds 0.36-0.77; noise off 4.14; sigma 4x smaller than
claimed 2.56-3.69; sampling rate 10x the claimed 4.14.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dpfl.client import training
from dpfl.client.canaries import DiracCanaries
from dpfl.client.randomness import dp_generators
from dpfl.client.training import TrainSettings, train_locally
from dpfl.privacy.audit.one_run import one_run_audit
from dpfl.privacy.audit.scores import dirac_observations, round_llr
from dpfl.privacy.calibration import calibrate_noise, steps_per_round

CLAIMED_EPSILON, DELTA, CONFIDENCE = 2.0, 1e-5, 0.95
REAL, DECLARED, BATCH, EPOCHS = 1000, 2000, 200, 10
LIVE, DEAD, CLASSES = 10, 200, 10
CANARIES = DEAD * CLASSES  # 2000
GUESSES_IN = 200
Q, STEPS = steps_per_round(DECLARED, BATCH, EPOCHS)
SIGMA = calibrate_noise(CLAIMED_EPSILON, DELTA, Q, STEPS, 1)


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(REAL, LIVE + DEAD)
    x[:, :LIVE] = torch.randn(REAL, LIVE, generator=g)
    return x, torch.randint(0, CLASSES, (REAL,), generator=g)


def _coordinates() -> list[tuple[str, int]]:
    width = LIVE + DEAD
    return [("weight", row * width + LIVE + j) for row in range(CLASSES) for j in range(DEAD)]


def audit_once(seed: int, *, noise_multiplier: float = SIGMA) -> float:
    """One audited round: the one-run lower bound on epsilon from the canaries' released coordinates."""
    coins = np.random.default_rng(seed).random(CANARIES) < 0.5
    coords = _coordinates()
    canaries = DiracCanaries(tuple(c for c, inside in zip(coords, coins, strict=True) if inside))
    torch.manual_seed(seed)
    model = nn.Linear(LIVE + DEAD, CLASSES)
    before = model.weight.detach().clone().view(-1)
    x, y = _data(seed)
    settings = TrainSettings(local_epochs=EPOCHS, batch_size=BATCH, learning_rate=1.0, momentum=0.0, optimizer="sgd",
                             dp=True, noise_multiplier=noise_multiplier, max_grad_norm=1.0, grad_sample_mode="bk")
    sampling, noise = dp_generators(deterministic=False, seed=seed, partition_id=0, server_round=1,
                                    device=torch.device("cpu"))
    outcome = train_locally(model, x, y, settings, sampling_generator=sampling, noise_generator=noise,
                            device=torch.device("cpu"), declared_records=DECLARED, canaries=canaries)
    assert (outcome.sample_rate, outcome.steps) == (Q, STEPS)  # the ledger's release is the claimed one
    update = (model.weight.detach().view(-1) - before).numpy()[[i for _, i in coords]]
    obs = dirac_observations(update, learning_rate=1.0, expected_batch=Q * DECLARED, clip_norm=1.0)
    scores = round_llr(obs, Q, STEPS, SIGMA)  # scored under the claimed sigma, whatever ran
    return one_run_audit(scores, coins, guesses_in=GUESSES_IN, guesses_out=0, delta=DELTA,
                         confidence=CONFIDENCE).epsilon_lower_bound


def test_the_claimed_mechanism_is_the_one_the_audit_assumes():
    assert (Q, STEPS) == (0.1, 100)
    assert 2.2 < SIGMA < 2.3


def test_honest_dp_sgd_never_exceeds_the_claimed_epsilon_over_20_runs():
    bounds = [audit_once(seed) for seed in range(20)]
    assert max(bounds) <= CLAIMED_EPSILON, bounds
    assert max(bounds) > 0  # the canaries do reach the release: a guard that sees nothing would pass anything


@pytest.mark.parametrize("seed", [101, 102, 103])
def test_noise_off_is_caught(seed):
    assert audit_once(seed, noise_multiplier=0.0) > CLAIMED_EPSILON


@pytest.mark.parametrize("seed", [201, 202, 203])
def test_noise_four_times_smaller_than_claimed_is_caught(seed):
    assert audit_once(seed, noise_multiplier=SIGMA / 4) > CLAIMED_EPSILON


@pytest.mark.parametrize("seed", [301, 302, 303])
def test_a_sampling_rate_ten_times_the_claimed_is_caught(seed, monkeypatch):
    honest = training.poisson_batch
    monkeypatch.setattr(training, "poisson_batch", lambda n, q, g: honest(n, min(1.0, 10 * q), g))
    assert audit_once(seed) > CLAIMED_EPSILON
