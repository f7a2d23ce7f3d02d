"""Accountants: a list of releases in, epsilon(delta) or delta(epsilon) out.

- ``pld``: dp-accounting's privacy loss distributions (pessimistic discretisation: an upper bound);
  the default, the tightest sound accountant here.
- ``prv``: Opacus' PRV accountant, its upper bound.
- ``rdp``: Renyi DP with both Opacus' and dp-accounting's conversions; the larger epsilon is reported
  (they differ at fractional orders).

Ledgers are composed incrementally and cached by their release parameters, so identical ledgers (IID
clients) are computed once and the per-round table costs one composition per round, not a recompute
of every prefix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.rdp import rdp_privacy_accountant as dp_rdp
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis import rdp as opacus_rdp

from privacy.releases import Release

ACCOUNTANTS: tuple[str, ...] = ("pld", "prv", "rdp")
DEFAULT_ACCOUNTANT = "pld"
PLD_DISCRETIZATION = 1e-4
PRV_EPS_ERROR = 0.01
RDP_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 257)))

Key = tuple[tuple[str, float, float, int], ...]


class UnknownAccountantError(ValueError):
    """Unknown accountant name; the message lists the known ones."""


def _check(accountant: str, delta: float | None = None) -> None:
    if accountant not in ACCOUNTANTS:
        raise UnknownAccountantError(f"unknown accountant {accountant!r}; known: {', '.join(ACCOUNTANTS)}")
    if delta is not None and not (0 < delta < 1):
        raise ValueError(f"delta {delta} is not valid: expected a number in (0, 1)")


def _key(releases: Sequence[Release]) -> Key:
    """Canonical form: consecutive releases of the same mechanism merge (steps add up), so a ledger of
    identical rounds is one self-composition - cheaper, and the same number however it is split."""
    merged: list[tuple[str, float, float, int]] = []
    for r in releases:
        mech, sigma, q, steps = r.key
        if merged and merged[-1][:3] == (mech, sigma, q):
            merged[-1] = (mech, sigma, q, merged[-1][3] + steps)
        else:
            merged.append((mech, sigma, q, steps))
    return tuple(merged)


# --- RDP ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=65536)
def _rdp_vectors(one: tuple[str, float, float, int]) -> tuple[np.ndarray, np.ndarray]:
    """(Opacus RDP, dp-accounting RDP) of one release over RDP_ORDERS."""
    _, sigma, q, steps = one
    orders = list(RDP_ORDERS)
    op = np.asarray(opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders), dtype=float)
    dp = np.asarray(dp_rdp._compute_rdp_poisson_subsampled_gaussian(q, sigma, orders), dtype=float) * steps
    return op, dp


def _rdp_epsilon_from_vectors(op: np.ndarray, dp: np.ndarray, delta: float) -> float:
    orders = list(RDP_ORDERS)
    eps_op, _ = opacus_rdp.get_privacy_spent(orders=orders, rdp=op, delta=delta)
    eps_dp, _ = dp_rdp.compute_epsilon(orders, dp, delta)
    return max(float(eps_op), float(eps_dp))


# --- PLD ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def _pld_one(one: tuple[str, float, float, int]) -> pld_lib.PrivacyLossDistribution:
    _, sigma, q, steps = one
    single = pld_lib.from_gaussian_mechanism(standard_deviation=sigma, sensitivity=1.0, pessimistic_estimate=True,
                                             value_discretization_interval=PLD_DISCRETIZATION, sampling_prob=q)
    return single.self_compose(steps) if steps > 1 else single


@lru_cache(maxsize=4096)
def _pld_prefix(key: Key) -> pld_lib.PrivacyLossDistribution:
    """PLD of a ledger, built from the cached PLD of its prefix (incremental across rounds)."""
    if len(key) == 1:
        return _pld_one(key[0])
    return _pld_prefix(key[:-1]).compose(_pld_one(key[-1]))


# --- public API -----------------------------------------------------------------------------------------
@lru_cache(maxsize=65536)
def _epsilon_cached(key: Key, delta: float, accountant: str) -> float:
    if not key:
        return 0.0
    if accountant == "rdp":
        op = sum((_rdp_vectors(k)[0] for k in key), np.zeros(len(RDP_ORDERS)))
        dp = sum((_rdp_vectors(k)[1] for k in key), np.zeros(len(RDP_ORDERS)))
        return _rdp_epsilon_from_vectors(op, dp, delta)
    if accountant == "pld":
        return float(_pld_prefix(key).get_epsilon_for_delta(delta))
    acc = PRVAccountant()
    acc.history = [(sigma, q, steps) for _, sigma, q, steps in key]
    return float(acc.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))


def epsilon(releases: Sequence[Release], delta: float, accountant: str = DEFAULT_ACCOUNTANT) -> float:
    """Cumulative epsilon of a ledger at delta."""
    _check(accountant, delta)
    return _epsilon_cached(_key(releases), float(delta), accountant)


def epsilon_per_release(releases: Sequence[Release], delta: float,
                        accountant: str = DEFAULT_ACCOUNTANT) -> list[float]:
    """Cumulative epsilon after each release (every prefix), composed incrementally."""
    _check(accountant, delta)
    if accountant == "rdp":
        out, op, dp = [], np.zeros(len(RDP_ORDERS)), np.zeros(len(RDP_ORDERS))
        for r in releases:
            a, b = _rdp_vectors(r.key)
            op, dp = op + a, dp + b
            out.append(_rdp_epsilon_from_vectors(op, dp, delta))
        return out
    return [_epsilon_cached(_key(releases[: i + 1]), float(delta), accountant) for i in range(len(releases))]


def epsilon_all(releases: Sequence[Release], delta: float) -> dict[str, float]:
    return {name: epsilon(releases, delta, name) for name in ACCOUNTANTS}


def delta_for_epsilon(releases: Sequence[Release], eps: float, accountant: str = DEFAULT_ACCOUNTANT) -> float:
    """Smallest delta the ledger satisfies at epsilon."""
    _check(accountant)
    key = _key(releases)
    if not key:
        return 0.0
    if accountant == "pld":
        return float(_pld_prefix(key).get_delta_for_epsilon(eps))
    lo, hi = 1e-300, 1.0 - 1e-12  # bisection on log(delta): epsilon(delta) is decreasing
    for _ in range(100):
        mid = math.exp((math.log(lo) + math.log(hi)) / 2)
        if _epsilon_cached(key, mid, accountant) > eps:
            lo = mid
        else:
            hi = mid
    return hi
