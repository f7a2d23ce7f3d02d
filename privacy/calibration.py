"""Noise calibration for a whole federated schedule, and the one definition of a round's schedule."""

from __future__ import annotations

import math
from functools import lru_cache

from privacy.accountants import DEFAULT_ACCOUNTANT, epsilon
from privacy.releases import DpSgdRelease, validate_release_params

MAX_SIGMA = 1e4


def steps_per_round(declared_records: int, batch_size: int, local_epochs: int) -> tuple[float, int]:
    """(q, steps) of one round of local DP-SGD: q = batch / declared records (capped at 1),
    steps = epochs x ceil(records / batch). Client, server and accountant all use this."""
    if declared_records < 1:
        raise ValueError(f"declared records {declared_records} is not valid: a client needs at least one record")
    q = min(1.0, batch_size / declared_records)
    return q, int(local_epochs) * math.ceil(declared_records / batch_size)


def _schedule_epsilon(sigma: float, q: float, steps: int, rounds: int, delta: float, accountant: str) -> float:
    return epsilon([DpSgdRelease(sigma, q, steps, r) for r in range(1, rounds + 1)], delta, accountant)


@lru_cache(maxsize=1024)
def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps_per_round: int, rounds: int,
                    accountant: str = DEFAULT_ACCOUNTANT, tolerance: float = 0.01) -> float:
    """Smallest sigma (within a relative tolerance) whose schedule ends at epsilon <= target."""
    validate_release_params(1.0, sample_rate, steps_per_round)
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ValueError(f"target epsilon {target_epsilon} is not valid: expected a number > 0")
    if not (0 < delta < 1):
        raise ValueError(f"delta {delta} is not valid: expected a number in (0, 1)")
    if rounds < 1:
        raise ValueError(f"rounds {rounds} is not valid: expected an integer >= 1")

    def eps(sigma: float, name: str = accountant) -> float:
        return _schedule_epsilon(sigma, sample_rate, steps_per_round, rounds, delta, name)

    # Bracket with RDP (fast, and never below the tight accountants), then bisect with the requested one.
    hi = _bisect(lambda s: eps(s, "rdp"), target_epsilon, 0.3, tolerance / 4)
    if accountant == "rdp":
        return hi
    lo = hi
    while eps(lo) <= target_epsilon:
        lo *= 0.85
        if lo < 0.05:
            return hi
    return _bisect(eps, target_epsilon, lo, tolerance / 2, lo=lo, hi=hi)


def _bisect(eps, target: float, start: float, rel_tol: float, lo: float | None = None,
            hi: float | None = None) -> float:
    """Smallest sigma with eps(sigma) <= target, to a relative tolerance; eps decreases with sigma."""
    if lo is None or hi is None:
        lo = hi = start
        while eps(hi) > target:
            lo, hi = hi, hi * 2
            if hi > MAX_SIGMA:
                raise ValueError(f"target epsilon {target} is out of reach: even sigma {MAX_SIGMA:g} exceeds it")
        if lo == hi:
            while eps(lo) <= target:
                hi, lo = lo, lo / 2
                if lo < 1e-3:
                    return hi
    while hi / lo > 1 + rel_tol:  # invariant: eps(lo) > target >= eps(hi)
        mid = math.sqrt(lo * hi)
        if eps(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi
