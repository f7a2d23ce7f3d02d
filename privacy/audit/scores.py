"""Scoring a white-box Dirac canary, and fixing the number of guesses before any score is seen.

A Dirac canary is a record whose clipped gradient is C times one coordinate's unit vector. In one round of local
DP-SGD with ``steps`` steps at Poisson rate q and noise multiplier sigma, the released update at that coordinate,
in units of C per expected batch, is y = sum_t (b_t + sigma z_t) with b_t ~ Bernoulli(q) when the canary is
included and 0 when it is not. ``round_llr`` is the exact log-likelihood ratio of the two hypotheses for one
round, the Neyman-Pearson optimal score; a canary's score is its sum over the rounds the auditor saw.

``planned_guesses`` simulates that claimed mechanism (public parameters only, a fixed seed) and returns the number
of guesses with the best median bound, so the choice never depends on the run's scores.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from dpfl.privacy.audit.one_run import one_run_audit


def round_llr(y: np.ndarray, sample_rate: float, steps: int, noise_multiplier: float) -> np.ndarray:
    """log p_in(y) / p_out(y) for one round's observation(s) ``y`` (units of C)."""
    y = np.asarray(y, dtype=np.float64)
    if noise_multiplier <= 0:
        raise ValueError("a likelihood-ratio score needs a noise multiplier > 0")
    variance = steps * noise_multiplier ** 2
    counts = np.arange(steps + 1, dtype=np.float64)
    log_pmf = stats.binom.logpmf(counts, steps, min(sample_rate, 1.0))
    keep = log_pmf > log_pmf.max() - 60  # counts whose probability is below e^-60 of the mode cannot matter
    counts, log_pmf = counts[keep], log_pmf[keep]
    terms = log_pmf[None, :] + (y.reshape(-1, 1) * counts[None, :] - counts[None, :] ** 2 / 2) / variance
    return special.logsumexp(terms, axis=1).reshape(y.shape)


def simulate_round_observations(included: np.ndarray, rounds: int, sample_rate: float, steps: int,
                                noise_multiplier: float, rng: np.random.Generator) -> np.ndarray:
    """(m, rounds) observations y of the claimed mechanism for canaries with the given coins."""
    m = included.shape[0]
    hits = rng.binomial(steps, min(sample_rate, 1.0), size=(m, rounds)) * included[:, None]
    return hits + rng.normal(0.0, noise_multiplier * np.sqrt(steps), size=(m, rounds))


def planned_guesses(m: int, *, rounds: int, sample_rate: float, steps: int, noise_multiplier: float, delta: float,
                    confidence: float = 0.95, trials: int = 5, seed: int = 20231) -> tuple[int, int]:
    """(guesses "in", guesses "out") with the best median one-run bound when the claimed mechanism runs exactly
    as stated: half and half, or "in" only, over a grid of sizes. Depends on public parameters only."""
    rng = np.random.default_rng(seed)
    sizes = sorted({max(2, int(round(m * f))) // 2 * 2 for f in (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)})
    grid = [(k // 2, k // 2) for k in sizes] + [(k, 0) for k in sizes if k < m]
    results: dict[tuple[int, int], list[float]] = {g: [] for g in grid}
    for _ in range(trials):
        included = rng.random(m) < 0.5
        y = simulate_round_observations(included, rounds, sample_rate, steps, noise_multiplier, rng)
        scores = round_llr(y, sample_rate, steps, noise_multiplier).sum(axis=1)
        for g in grid:
            bound = one_run_audit(scores, included, guesses_in=g[0], guesses_out=g[1], delta=delta,
                                  confidence=confidence).epsilon_lower_bound
            results[g].append(bound)
    return max(grid, key=lambda g: (float(np.median(results[g])), -sum(g)))


def dirac_observations(update_values: np.ndarray, *, learning_rate: float, expected_batch: float,
                       clip_norm: float) -> np.ndarray:
    """A released update's values at Dirac canary coordinates, in units of C per step (the y of ``round_llr``).

    Plain SGD moves a parameter by -lr * (clipped sum + noise) / expected batch per step, so
    y = -update * expected batch / (lr * C)."""
    return -np.asarray(update_values, dtype=np.float64) * expected_batch / (learning_rate * clip_norm)
