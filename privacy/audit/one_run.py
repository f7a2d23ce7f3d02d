"""The one-run lower bound on epsilon (Steinke, Nasr & Jagielski 2023, "Privacy auditing with one (1) training run").

m canaries are each included in training by an independent fair coin S_i. After training the auditor scores
every canary and, with the number of guesses fixed *before* scoring, guesses "in" for the k+ highest scores and
"out" for the k- lowest, abstaining on the rest: r = k+ + k- guesses, v of them correct. Under (eps, delta)-DP
the number of correct guesses is stochastically dominated by Binomial(r, e^eps / (1 + e^eps)) up to a delta
term (their Theorem 3.1 and Proposition 5.7), so the p-value of "the mechanism is (eps, delta)-DP" given v is

    P[Bin(r, p) >= v] + 2 m delta * max_{1 <= i <= v} P[v - i <= Bin(r, p) < v] / i,    p = e^eps / (1 + e^eps),

and the reported lower bound is the largest eps whose p-value is at most 1 - confidence: with probability at least
``confidence`` over the coins and the mechanism, the true eps is at least that large. The bound holds for any score
function; a better score only makes it tighter.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, special, stats


def one_run_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The probability of at least ``v`` correct guesses out of ``r`` if the mechanism were (eps, delta)-DP."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"expected 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if eps < 0 or not 0 <= delta <= 1:
        raise ValueError(f"expected eps >= 0 and 0 <= delta <= 1, got eps={eps}, delta={delta}")
    p = float(special.expit(eps))
    tail = float(stats.binom.sf(v - 1, r, p))  # P[Bin >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    i = np.arange(1, v + 1)
    below = stats.binom.cdf(v - 1, r, p) - stats.binom.cdf(v - i - 1, r, p)  # P[v - i <= Bin < v]
    alpha = float(np.max(below / i))
    return min(tail + alpha * delta * 2 * m, 1.0)


def one_run_epsilon(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """The largest eps for which ``v`` correct guesses out of ``r`` reject (eps, delta)-DP at ``confidence``;
    0 when even eps = 0 is not rejected."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    significance = 1.0 - confidence

    def excess(eps: float) -> float:  # > 0 while (eps, delta)-DP is rejected
        return significance - one_run_p_value(m, r, v, eps, delta)

    if r == 0 or excess(0.0) <= 0:
        return 0.0
    hi = 1.0
    while excess(hi) > 0:
        if hi > 1e3:  # every guess right with r huge: the bound is effectively unbounded
            return math.inf
        hi *= 2
    return float(optimize.brentq(excess, 0.0, hi, xtol=1e-6))


@dataclass(frozen=True)
class OneRunResult:
    """One audit's guesses and its bound, as written to report/audit.json."""

    canaries: int
    guesses_in: int
    guesses_out: int
    guesses: int
    correct: int
    delta: float
    confidence: float
    epsilon_lower_bound: float

    def as_dict(self) -> dict:
        return asdict(self)


def guess_outcome(scores: np.ndarray, included: np.ndarray, guesses_in: int, guesses_out: int) -> tuple[int, int]:
    """(r, v): guess "in" for the ``guesses_in`` highest scores and "out" for the ``guesses_out`` lowest.

    Ties are broken by a stable sort on the canary order, which the coins do not influence."""
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    m = scores.shape[0]
    if included.shape != (m,):
        raise ValueError(f"{m} scores but {included.shape[0]} coins")
    if guesses_in < 0 or guesses_out < 0 or guesses_in + guesses_out > m:
        raise ValueError(f"guesses {guesses_in} in + {guesses_out} out must be between 0 and m = {m}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("every canary score must be finite")
    order = np.argsort(scores, kind="stable")
    low, high = order[:guesses_out], order[m - guesses_in:] if guesses_in else order[:0]
    correct = int(included[high].sum()) + int((~included[low]).sum())
    return guesses_in + guesses_out, correct


def one_run_audit(scores: np.ndarray, included: np.ndarray, *, guesses_in: int, guesses_out: int, delta: float,
                  confidence: float = 0.95) -> OneRunResult:
    """Guess, count and bound: the whole one-run audit of a set of canary scores."""
    r, v = guess_outcome(scores, included, guesses_in, guesses_out)
    m = int(np.asarray(scores).shape[0])
    return OneRunResult(canaries=m, guesses_in=guesses_in, guesses_out=guesses_out, guesses=r, correct=v,
                        delta=delta, confidence=confidence,
                        epsilon_lower_bound=one_run_epsilon(m, r, v, delta, confidence))
