"""Noise calibration for a whole federated schedule, and the one definition of a round's schedule."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from functools import lru_cache

from dpfl.privacy.accountants import (
    DEFAULT_ACCOUNTANT,
    DEFAULT_NEIGHBOURING,
    RdpAccountant,
    epsilon,
    get_accountant,
)
from dpfl.privacy.releases import DpSgdRelease, FixedCohortGaussianRelease, validate_release_params

__all__ = ["FIXED_COHORT_RDP_ORDERS", "MAX_SIGMA", "MIN_SIGMA", "calibrate_fixed_cohort", "calibrate_noise",
           "fixed_cohort_epsilon", "steps_per_round"]

MAX_SIGMA = 1e4
MIN_SIGMA = 0.1  # below this a release is close to non-private; a target that loose is met by it
# RDP orders for fixed-size cohorts (dp-accounting's sampled-without-replacement Gaussian is exact at integer
# orders and costs O(order) each, so the grid stops at 512)
FIXED_COHORT_RDP_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512])


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} {value!r} is not valid: expected an integer >= 1")
    return int(value)


def steps_per_round(declared_records: int, batch_size: int, local_epochs: int) -> tuple[float, int]:
    """(q, steps) of one round of local DP-SGD: q = batch / declared records (capped at 1),
    steps = epochs x ceil(records / batch).

    Client, server and accountant all use this one definition, so the release a client reports and
    the one the server accounts for cannot drift apart.
    """
    n = _positive_int("declared records", declared_records)
    b = _positive_int("batch size", batch_size)
    e = _positive_int("local epochs", local_epochs)
    return min(1.0, b / n), e * math.ceil(n / b)


def _schedule_epsilon(sigma: float, q: float, steps: int, rounds: int, delta: float,
                      accountant: str, neighbouring: str = DEFAULT_NEIGHBOURING) -> float:
    return epsilon([DpSgdRelease(sigma, q, steps, r) for r in range(1, rounds + 1)], delta, accountant,
                   neighbouring=neighbouring)


@lru_cache(maxsize=1024)
def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps_per_round: int,
                    rounds: int, accountant: str = DEFAULT_ACCOUNTANT, tolerance: float = 0.01, *,
                    neighbouring: str = DEFAULT_NEIGHBOURING) -> float:
    """Smallest noise multiplier sigma (to a relative ``tolerance``) whose whole schedule - ``rounds``
    rounds of ``steps_per_round`` DP-SGD steps at sample rate q - ends at epsilon <= target under the
    ``neighbouring`` relation (replace-one: an accountant that supports it, i.e. pld).

    The result satisfies epsilon(sigma) <= target < epsilon(sigma * (1 - tolerance)). RDP brackets the
    answer first (fast, and no tighter than PLD/PRV); the requested accountant then bisects. Under
    replace-one, which RDP does not support, the seed is RDP's add/remove sigma for target / 2 (group
    privacy: a replacement is a removal and an addition), only a starting guess for the bisection.
    Raises ValueError for invalid inputs or when sigma would have to exceed MAX_SIGMA, and
    UnsupportedRelationError when ``accountant`` does not support ``neighbouring``.
    """
    get_accountant(accountant, neighbouring=neighbouring)  # Unknown*/Unsupported*Error before any work
    validate_release_params(1.0, sample_rate, steps_per_round)
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, numbers.Real) \
            or not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target epsilon {target_epsilon!r} is not valid: expected a finite number > 0")
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not (0 < delta < 1):
        raise ValueError(f"delta {delta!r} is not valid: expected a number in (0, 1)")
    rounds = _positive_int("rounds", rounds)
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not (0 < tolerance < 0.5):
        raise ValueError(f"tolerance {tolerance!r} is not valid: expected a number in (0, 0.5)")

    q, steps, d = float(sample_rate), int(steps_per_round), float(delta)

    def eps_with(name: str, relation: str = DEFAULT_NEIGHBOURING) -> Callable[[float], float]:
        return lambda s: _schedule_epsilon(s, q, steps, rounds, d, name, relation)

    target = float(target_epsilon)
    # RDP is cheap: its sigma brackets the tight accountants' (within ~15 %), so it seeds their search.
    seed = RdpAccountant.name
    if neighbouring != DEFAULT_NEIGHBOURING:  # RDP has no replace-one: seed with add/remove at target / 2
        rdp_sigma = _bisect(eps_with(seed), target / 2, 1.0, 0.02)
        return _bisect(eps_with(accountant, neighbouring), target, rdp_sigma, tolerance)
    rdp_sigma = _bisect(eps_with(seed), target, 1.0, tolerance if accountant == seed else 0.02)
    if accountant == seed:
        return rdp_sigma
    return _bisect(eps_with(accountant), target, rdp_sigma, tolerance)


def _bisect(eps: Callable[[float], float], target: float, guess: float, tolerance: float) -> float:
    """Smallest sigma with eps(sigma) <= target, to a relative tolerance; eps decreases with sigma.

    Invariant: eps(lo) > target >= eps(hi); returns hi once lo >= hi * (1 - tolerance).
    """
    guess = min(max(guess, MIN_SIGMA), MAX_SIGMA)
    step = 1.15  # the tight accountants' sigma is within ~15 % of RDP's: start with small brackets
    lo = hi = guess
    if eps(guess) > target:
        while True:
            lo, hi = hi, min(hi * step, MAX_SIGMA)
            if eps(hi) <= target:
                break
            if hi >= MAX_SIGMA:
                raise ValueError(f"target epsilon {target:g} is out of reach: even noise multiplier "
                                 f"{MAX_SIGMA:g} gives epsilon {eps(hi):.4g}")
            step *= step
    else:
        while True:
            hi, lo = lo, max(lo / step, MIN_SIGMA)
            if eps(lo) > target:
                break
            if lo <= MIN_SIGMA:
                return MIN_SIGMA
            step *= step
    while lo < hi * (1 - tolerance):
        mid = math.sqrt(lo * hi)
        if eps(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def fixed_cohort_epsilon(releases: list[FixedCohortGaussianRelease], delta: float) -> float:
    """Epsilon of fixed-size cohorts (sampling without replacement) under replace-one, by dp-accounting's RDP
    accountant: the only dp-accounting accountant with an event for it."""
    import dp_accounting

    accountant = dp_accounting.rdp.RdpAccountant(
        FIXED_COHORT_RDP_ORDERS, neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    for release in releases:
        accountant.compose(release.to_dp_event())
    return float(accountant.get_epsilon(delta))


def calibrate_fixed_cohort(target: float, delta: float, q: float, rounds: int, population: int,
                           tolerance: float = 0.005) -> float:
    """The smallest noise multiplier (to ``tolerance``) whose ``rounds`` fixed-cohort releases end at epsilon <=
    target; ValueError when even MAX_SIGMA is not enough."""
    def eps(z: float) -> float:
        release = FixedCohortGaussianRelease(noise_multiplier=z, sample_rate=q, steps=rounds, population=population)
        return fixed_cohort_epsilon([release], delta)

    return _bisect(eps, float(target), 1.0, tolerance)
