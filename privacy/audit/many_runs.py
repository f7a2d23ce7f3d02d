"""Lower bounds and estimates from canary scores pooled over several runs (Nasr et al. 2021, 2023).

``clopper_pearson_epsilon``: a threshold test "score >= t means included". The threshold is chosen on one half of
the scores (a fixed random split) and its false-positive and false-negative rates are bounded on the other half
with one-sided Clopper-Pearson intervals (each at half the significance), so choosing the best threshold costs no
validity. Any (eps, delta)-DP mechanism satisfies FPR + e^eps FNR >= 1 - delta and the mirror image, hence

    eps >= max(log((1 - delta - FNR_hi) / FPR_hi), log((1 - delta - FPR_hi) / FNR_hi)).

``gdp_epsilon(gdp_mu_estimate(...))``: the Gaussian-DP reading (Dong, Roth & Su 2019; Nasr et al. 2023): if the
scores of included and excluded canaries are two Gaussians a distance mu (in standard deviations) apart, the
mechanism is no better than mu-GDP, whose eps at delta is stated. An *estimate*, not a bound: it is reported beside
the Clopper-Pearson bound, never instead of it.

Pooling canaries of one run treats them as independent trials, as jax_privacy's auditor does; the one-run bound
(one_run.py) needs no such assumption.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, stats


def _cp_upper(failures: int, trials: int, significance: float) -> float:
    """One-sided Clopper-Pearson upper bound on a rate from ``failures`` out of ``trials``."""
    if trials == 0 or failures >= trials:
        return 1.0
    return float(stats.beta.ppf(1 - significance, failures + 1, trials - failures))


def _eps_from_rates(fpr: float, fnr: float, delta: float) -> float:
    best = 0.0
    for a, b in ((fpr, fnr), (fnr, fpr)):
        if a > 0 and 1 - delta - b > a:
            best = max(best, math.log((1 - delta - b) / a))
        elif a == 0 and 1 - delta - b > 0:
            return math.inf
    return best


def _best_threshold(in_scores: np.ndarray, out_scores: np.ndarray, delta: float) -> float:
    """The threshold with the largest empirical eps (rates with one pseudo-count, so a zero never wins alone)."""
    candidates = np.unique(np.concatenate([in_scores, out_scores]))
    if candidates.size == 0:
        return 0.0
    out_sorted, in_sorted = np.sort(out_scores), np.sort(in_scores)
    fpr = (out_sorted.size - np.searchsorted(out_sorted, candidates, side="left") + 1) / (out_sorted.size + 1)
    fnr = (np.searchsorted(in_sorted, candidates, side="left") + 1) / (in_sorted.size + 1)
    eps = [_eps_from_rates(float(a), float(b), delta) for a, b in zip(fpr, fnr, strict=True)]
    return float(candidates[int(np.argmax(eps))])


@dataclass(frozen=True)
class ManyRunBounds:
    """What report/audit.json holds for ``--runs R``."""

    runs: int
    scores_in: int
    scores_out: int
    threshold: float
    false_positive_rate_upper: float
    false_negative_rate_upper: float
    clopper_pearson_epsilon: float
    gdp_mu_estimate: float
    gdp_epsilon_estimate: float
    delta: float
    confidence: float

    def as_dict(self) -> dict:
        return asdict(self)


def clopper_pearson_epsilon(in_scores: np.ndarray, out_scores: np.ndarray, delta: float,
                            confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float, float]:
    """(eps lower bound, threshold, FPR upper, FNR upper) from a threshold chosen on a random half of the scores."""
    rng = np.random.default_rng(seed)
    a_in, b_in = _halves(np.asarray(in_scores, dtype=np.float64), rng)
    a_out, b_out = _halves(np.asarray(out_scores, dtype=np.float64), rng)
    if min(a_in.size, b_in.size, a_out.size, b_out.size) == 0:
        return 0.0, 0.0, 1.0, 1.0
    t = _best_threshold(a_in, a_out, delta)
    significance = (1 - confidence) / 2
    fpr = _cp_upper(int(np.sum(b_out >= t)), b_out.size, significance)
    fnr = _cp_upper(int(np.sum(b_in < t)), b_in.size, significance)
    return _eps_from_rates(fpr, fnr, delta), t, fpr, fnr


def _halves(values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(values.size)
    cut = values.size // 2
    return values[order[:cut]], values[order[cut:]]


def gdp_mu_estimate(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """The distance between the two score distributions in pooled standard deviations (0 when they overlap
    the wrong way round)."""
    a, b = np.asarray(in_scores, dtype=np.float64), np.asarray(out_scores, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        return 0.0
    pooled = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    if pooled == 0:
        return math.inf if a.mean() > b.mean() else 0.0
    return max(0.0, float((a.mean() - b.mean()) / pooled))


def gdp_delta(mu: float, eps: float) -> float:
    """delta(eps) of mu-Gaussian DP (Dong, Roth & Su 2019, Corollary 2.13)."""
    return float(stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2))


def gdp_epsilon(mu: float, delta: float) -> float:
    """The eps at ``delta`` of a mu-GDP mechanism (0 when mu-GDP already gives delta at eps = 0)."""
    if mu <= 0:
        return 0.0
    if math.isinf(mu):
        return math.inf
    if gdp_delta(mu, 0.0) <= delta:
        return 0.0
    hi = 1.0
    while gdp_delta(mu, hi) > delta:
        hi *= 2
    return float(optimize.brentq(lambda e: gdp_delta(mu, e) - delta, 0.0, hi, xtol=1e-9))


def many_run_bounds(in_scores: np.ndarray, out_scores: np.ndarray, *, runs: int, delta: float,
                    confidence: float = 0.95, seed: int = 0) -> ManyRunBounds:
    eps, t, fpr, fnr = clopper_pearson_epsilon(in_scores, out_scores, delta, confidence, seed)
    mu = gdp_mu_estimate(in_scores, out_scores)
    return ManyRunBounds(runs=runs, scores_in=int(np.size(in_scores)), scores_out=int(np.size(out_scores)),
                         threshold=t, false_positive_rate_upper=fpr, false_negative_rate_upper=fnr,
                         clopper_pearson_epsilon=eps, gdp_mu_estimate=mu, gdp_epsilon_estimate=gdp_epsilon(mu, delta),
                         delta=delta, confidence=confidence)
