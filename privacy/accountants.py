"""Accountants: a ledger (a sequence of releases) in, epsilon(delta) or delta(epsilon) out.

- ``pld`` (default): dp-accounting privacy loss distributions, pessimistic (connect-the-dots), so an
  upper bound; the tightest of the three. See ``privacy._pld``.
- ``prv``: Opacus' PRV accountant, its upper bound (estimate + eps_error: 0.01, tighter for small
  epsilons). See ``privacy._prv``.
- ``rdp``: Renyi DP over a dense grid of orders, computed the way Opacus and the way dp-accounting do it;
  the larger epsilon is reported (they differ at fractional orders). See ``privacy._rdp``.

Every number is cached per process by the ledger's release parameters (never by round number), so
identical ledgers - the clients of an IID federation - cost one computation, and ``epsilon_per_release``
composes one release at a time instead of recomputing every prefix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant as dp_rdp

from dpfl.privacy import _pld, _prv, _rdp
from dpfl.privacy._pld import LRU
from dpfl.privacy.releases import DpSgdRelease, GaussianRelease, Release

__all__ = [
    "ACCOUNTANTS", "DEFAULT_ACCOUNTANT", "UnknownAccountantError", "clear_caches", "delta_for_epsilon",
    "epsilon", "epsilon_all", "epsilon_per_release",
]

ACCOUNTANTS: tuple[str, ...] = ("pld", "prv", "rdp")
DEFAULT_ACCOUNTANT = "pld"

Params = tuple[tuple[float, float, int], ...]  # (noise multiplier, sample rate, steps) per release


class UnknownAccountantError(ValueError):
    """An accountant name this package does not know; the message lists the known ones."""

    def __init__(self, name: object) -> None:
        super().__init__(f"accountant {name!r} is not known: expected one of {', '.join(ACCOUNTANTS)}")


# --- validation --------------------------------------------------------------------------------------
def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise UnknownAccountantError(accountant)


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, int | float | np.floating) or not (0 < delta < 1):
        raise ValueError(f"delta {delta!r} is not valid: expected a number in (0, 1)")
    return float(delta)


def _params(releases: Sequence[Release]) -> Params:
    """What the accountants need from a ledger; the mechanism is a Poisson-subsampled Gaussian either way."""
    out = []
    for i, r in enumerate(releases):
        if not isinstance(r, DpSgdRelease | GaussianRelease):
            raise TypeError(f"release {i} is a {type(r).__name__}, expected DpSgdRelease or GaussianRelease "
                            "(use release_from_dict for ledger entries)")
        out.append((r.noise_multiplier, r.sample_rate, r.steps))
    return tuple(out)


# --- RDP -----------------------------------------------------------------------------------------------
def _rdp_cumulative(params: Params) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative RDP after each release (rows), Opacus' and dp-accounting's: RDP adds up."""
    op = np.empty((len(params), len(_rdp.ORDERS)))
    dp = np.empty_like(op)
    for row, (sigma, q, steps) in enumerate(params):
        one_op, one_dp = _rdp.rdp_one_step(sigma, q)
        op[row], dp[row] = one_op * steps, one_dp * steps
    return np.cumsum(op, axis=0), np.cumsum(dp, axis=0)


def _rdp_delta(op: np.ndarray, dp: np.ndarray, eps: float) -> float:
    """Smallest delta either library's RDP-to-DP conversion certifies at eps; the larger of the two."""
    a = _rdp.ORDERS
    with np.errstate(invalid="ignore", over="ignore"):
        log_delta_op = np.nanmin((a - 1) * (op - eps + np.log1p(-1 / a)) - np.log(a))
    delta_op = min(math.exp(log_delta_op), 1.0) if log_delta_op < 700 else 1.0
    delta_dp, _ = dp_rdp.compute_delta(list(a), list(dp), eps)
    return max(delta_op, float(delta_dp))


# --- caches ----------------------------------------------------------------------------------------------
_EPSILON = LRU(65536)  # (accountant, canonical ledger key, delta) -> epsilon
_PER_RELEASE = LRU(4096)  # (accountant, params, delta) -> epsilons after each release


def _canonical(params: Params, accountant: str) -> tuple:
    """The part of a ledger an accountant's answer depends on (so more ledgers share a cache entry)."""
    if accountant == "pld":
        return tuple(_pld.runs_of(params))
    if accountant == "prv":
        return _prv.merged(params)
    return params


def _prv_eps_error(params: Params, delta: float) -> float:
    op, dp = _rdp_cumulative(_prv.merged(params))
    return _prv.eps_error_for(float(_rdp.epsilon(op[-1:], dp[-1:], delta)[0]))


def _compute_epsilon(accountant: str, key: tuple, delta: float) -> float:
    if accountant == "pld":
        return _pld.epsilon(key, delta)
    if accountant == "prv":
        return _prv.epsilon(key, delta, _prv_eps_error(key, delta))
    op, dp = _rdp_cumulative(key)
    return float(_rdp.epsilon(op[-1:], dp[-1:], delta)[0])


# --- public API ----------------------------------------------------------------------------------------
def epsilon(releases: Sequence[Release], delta: float, accountant: str = DEFAULT_ACCOUNTANT) -> float:
    """Cumulative epsilon of a ledger at delta (an upper bound); 0.0 for an empty ledger."""
    _check_accountant(accountant)
    delta = _check_delta(delta)
    params = _params(releases)
    if not params:
        return 0.0
    key = _canonical(params, accountant)
    return _EPSILON.get_or_compute((accountant, key, delta), lambda: _compute_epsilon(accountant, key, delta))


def epsilon_per_release(releases: Sequence[Release], delta: float,
                        accountant: str = DEFAULT_ACCOUNTANT) -> list[float]:
    """Cumulative epsilon after each release (every prefix of the ledger), composed incrementally.

    ``rdp`` and ``pld`` equal ``epsilon`` of each prefix exactly; ``prv`` uses the whole ledger's
    discretisation for every prefix, which keeps each value an upper bound and within 2 x eps_error of
    a fresh computation.
    """
    _check_accountant(accountant)
    delta = _check_delta(delta)
    params = _params(releases)
    if not params:
        return []

    def compute() -> tuple[float, ...]:
        if accountant == "rdp":
            op, dp = _rdp_cumulative(params)
            out = tuple(float(e) for e in _rdp.epsilon(op, dp, delta))
        elif accountant == "pld":
            out = tuple(_pld.epsilon_per_release(params, delta))
        else:
            return tuple(_prv.epsilon_per_release(params, delta, _prv_eps_error(params, delta)))
        for n, eps in enumerate(out, start=1):  # every prefix is now known: serve later epsilon() calls
            _EPSILON.put((accountant, _canonical(params[:n], accountant), delta), eps)
        return out

    return list(_PER_RELEASE.get_or_compute((accountant, params, delta), compute))


def epsilon_all(releases: Sequence[Release], delta: float) -> dict[str, float]:
    """Every accountant's epsilon side by side (for reports: RDP and PRV as cross-checks of PLD)."""
    return {name: epsilon(releases, delta, name) for name in ACCOUNTANTS}


def delta_for_epsilon(releases: Sequence[Release], epsilon: float,
                      accountant: str = DEFAULT_ACCOUNTANT) -> float:
    """Smallest delta (an upper bound) for which the ledger is (epsilon, delta)-DP; 0.0 when empty."""
    _check_accountant(accountant)
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float | np.floating) \
            or not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon {epsilon!r} is not valid: expected a finite number >= 0")
    eps = float(epsilon)
    params = _params(releases)
    if not params:
        return 0.0
    if accountant == "pld":
        return min(1.0, _pld.delta(tuple(_pld.runs_of(params)), eps))
    if accountant == "rdp":
        op, dp = _rdp_cumulative(params)
        return _rdp_delta(op[-1], dp[-1], eps)
    return _prv_delta(releases, eps)


def _prv_delta(releases: Sequence[Release], eps: float, rel_tol: float = 0.01) -> float:
    """PRV has no delta(epsilon) bound of its own: bisect on log(delta) for the smallest delta whose
    epsilon upper bound is <= eps, starting from PLD's (tight) answer. Returns the upper end."""

    def ok(d: float) -> bool:
        try:
            return epsilon(releases, d, "prv") <= eps
        except ValueError:  # PRV cannot resolve a delta this small: it certifies nothing there
            return False

    hi = min(0.5, max(2 * delta_for_epsilon(releases, eps, "pld"), 1e-300))
    while not ok(hi):
        if hi >= 0.5:
            return 1.0
        hi = min(0.5, hi * 8)
    lo = hi / 8
    while ok(lo):
        if lo < 1e-300:
            return lo
        hi, lo = lo, lo / 8
    while hi / lo > 1 + rel_tol:  # invariant: eps(lo) > eps >= eps(hi)
        mid = math.sqrt(lo * hi)
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def clear_caches() -> None:
    """Forget every cached result (benchmarks measure cold timings with this)."""
    _EPSILON.clear()
    _PER_RELEASE.clear()
    _rdp.rdp_one_step.cache_clear()
    _pld.clear_caches()
