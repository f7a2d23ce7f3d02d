"""RDP of the Poisson-subsampled Gaussian, vectorised over orders, as Opacus and dp-accounting compute it.

Why a port and not the libraries' own functions: both evaluate one order at a time in Python loops
(0.2-0.5 s per (sigma, q) over the dense order grid), and a federation with a different q per client
needs hundreds of those. This module evaluates the same series (Mironov, Talwar & Zhang 2019, Sec. 3.3)
with numpy, keeping each library's own variant:

- Opacus (``opacus.accountants.analysis.rdp``): the exact, alternating series for fractional orders,
  summed until a term drops below e^-30; conversion of Balle et al. 2020 (``get_privacy_spent``).
- dp-accounting (``rdp_privacy_accountant``): sums the *absolute* values of the fractional-order terms (an
  upper bound), stops when a term is e^-30 below the running total or gives up (infinity: the order is
  ignored) after 1000 terms; its conversion also has a KL shortcut (``compute_epsilon``).

At integer orders the two coincide. ``tests/test_privacy_accountants.py`` checks this port against both
libraries' own functions order by order.

Add/remove adjacency only (``RELATIONS``): both series are the RDP of q N(1, sigma^2) + (1 - q) N(0, sigma^2)
against N(0, sigma^2). dp-accounting's ``RdpAccountant`` refuses ``REPLACE_ONE`` for Poisson sampling (it
has a replace-one bound only for sampling without replacement), and Opacus has none, so the ``rdp``
accountant refuses replace-one; ``accountants.replace_one_cross_check`` stands in for an independent
replace-one figure (group privacy of size 2 over add/remove).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import special

RELATIONS: tuple[str, ...] = ("add-remove",)  # the neighbouring relations these series model
# Dense orders like dp-accounting's defaults: 1.1 .. 10.9 by 0.1, every integer 11 .. 256, then 512, 1024.
ORDERS: np.ndarray = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 257)) + [512, 1024],
                              dtype=float)
_INT = np.array([float(a).is_integer() for a in ORDERS])
_FRAC = ~_INT
_DPACC_MAX_TERMS = 1000  # dp-accounting's _MAX_STEPS_LOG_A_FRAC
_OPACUS_STOP = -30.0
_OPACUS_MAX_TERMS = 1 << 20  # Opacus loops until convergence; far beyond what any (sigma, q) here needs


def _log_comb(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    """log |binom(n, k)| (gammaln returns log|Gamma| for negative non-integers)."""
    return special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)


def _log_erfc(x: np.ndarray) -> np.ndarray:
    return math.log(2) + special.log_ndtr(-x * 2**0.5)


# Tables that do not depend on (sigma, q), built once: binomial coefficients and index grids.
_INT_ORDERS = ORDERS[_INT]
_FRAC_ORDERS = ORDERS[_FRAC]
_SMALL_INT = _INT_ORDERS[_INT_ORDERS <= 256]
_LARGE_INT = _INT_ORDERS[_INT_ORDERS > 256]
_I_SMALL = np.arange(257, dtype=float)[None, :]
with np.errstate(invalid="ignore", divide="ignore"):
    _LOG_COMB_SMALL = np.where(_SMALL_INT[:, None] >= _I_SMALL, _log_comb(_SMALL_INT[:, None], _I_SMALL),
                               -np.inf)
_TABLE_TERMS = 1024
_I_FRAC = np.arange(_TABLE_TERMS, dtype=float)[None, :]
_LOG_COMB_FRAC = _log_comb(_FRAC_ORDERS[:, None], _I_FRAC)
_SIGN_FRAC = np.sign(special.binom(_FRAC_ORDERS[:, None], _I_FRAC))


def _log_a_int(q: float, sigma: float) -> np.ndarray:
    """log A_alpha at the integer orders: a finite binomial sum, done as masked log-sum-exps."""
    lq, l1q, s2 = math.log(q), math.log1p(-q), 2 * sigma**2
    a, i = _SMALL_INT[:, None], _I_SMALL
    small = special.logsumexp(_LOG_COMB_SMALL + i * lq + (a - i) * l1q + (i * i - i) / s2, axis=1)
    large = []
    for alpha in _LARGE_INT:
        j = np.arange(alpha + 1)
        large.append(special.logsumexp(_log_comb(alpha, j) + j * lq + (alpha - j) * l1q + (j * j - j) / s2))
    return np.concatenate([small, np.array(large)])


def _frac_terms(q: float, sigma: float, rows: np.ndarray, n: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Terms 0..n-1 of the two halves (log s0, log s1) of the fractional series for ``rows``, and signs."""
    a = _FRAC_ORDERS[rows][:, None]
    if n <= _TABLE_TERMS:
        i, log_coef, sign = _I_FRAC[:, :n], _LOG_COMB_FRAC[rows, :n], _SIGN_FRAC[rows, :n]
    else:
        i = np.arange(n, dtype=float)[None, :]
        log_coef, sign = _log_comb(a, i), np.sign(special.binom(a, i))
    j = a - i
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    lq, l1q, s2, r2s = math.log(q), math.log1p(-q), 2 * sigma**2, math.sqrt(2) * sigma
    log_s0 = log_coef + i * lq + j * l1q + (i * i - i) / s2 + (math.log(0.5) + _log_erfc((i - z0) / r2s))
    log_s1 = log_coef + j * lq + i * l1q + (j * j - j) / s2 + (math.log(0.5) + _log_erfc((z0 - j) / r2s))
    return log_s0, log_s1, sign


def _signed_log_sums(log_s: np.ndarray, sign: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Per row, log(sum_{i < last} sign_i exp(log_s_i)); -inf where that sum is not positive."""
    cols = np.arange(log_s.shape[1])[None, :]
    masked = np.where(cols < last[:, None], log_s, -np.inf)
    m = masked.max(axis=1)
    total = np.sum(sign * np.exp(masked - m[:, None]), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, m + np.log(total), -np.inf)


def _log_a_frac(q: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """log A_alpha at the fractional orders, (Opacus' exact series, dp-accounting's absolute series).

    Opacus adds signed terms until both halves are below e^-30. dp-accounting adds absolute values and
    stops once both halves decrease and are e^-30 below the running total, or returns infinity (the
    order is then ignored) after 1000 terms. Terms are computed for all unfinished orders at once, in
    growing blocks (64, 1024, then 4x): most orders need few terms, a few near 1 need thousands.
    """
    log_a_op = np.full(len(_FRAC_ORDERS), np.nan)
    log_a_dp = np.full(len(_FRAC_ORDERS), np.nan)
    rows, n = np.arange(len(_FRAC_ORDERS)), 64
    while rows.size:
        log_s0, log_s1, sign = _frac_terms(q, sigma, rows, n)
        need = np.isnan(log_a_dp[rows])
        if need.any():  # dp-accounting
            m = min(n, _DPACC_MAX_TERMS)
            s0, s1 = log_s0[need, :m], log_s1[need, :m]
            total = np.logaddexp(np.logaddexp.accumulate(s0, axis=1), np.logaddexp.accumulate(s1, axis=1))
            stop = np.zeros_like(s0, dtype=bool)
            stop[:, 1:] = ((s0[:, 1:] < s0[:, :-1]) & (s1[:, 1:] < s1[:, :-1])
                           & (np.maximum(s0[:, 1:], s1[:, 1:]) < total[:, 1:] - 30))
            found = stop.any(axis=1)
            given_up = np.inf if n >= _DPACC_MAX_TERMS else np.nan
            log_a_dp[rows[need]] = np.where(found, total[np.arange(len(s0)), stop.argmax(axis=1)], given_up)
        need = np.isnan(log_a_op[rows])
        if need.any():  # Opacus
            s0, s1, sg = log_s0[need], log_s1[need], sign[need]
            below = np.maximum(s0, s1) < _OPACUS_STOP
            done = below.any(axis=1) | (n >= _OPACUS_MAX_TERMS)
            last = np.where(below.any(axis=1), below.argmax(axis=1) + 1, n)[done]
            a0 = _signed_log_sums(s0[done], sg[done], last)
            a1 = _signed_log_sums(s1[done], sg[done], last)
            log_a_op[rows[need][done]] = np.logaddexp(a0, a1)
        rows = rows[np.isnan(log_a_op[rows]) | np.isnan(log_a_dp[rows])]
        n = _TABLE_TERMS if n < _TABLE_TERMS else n * 4
    return log_a_op, log_a_dp


@lru_cache(maxsize=8192)
def rdp_one_step(noise_multiplier: float, sample_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """RDP of one step over ``ORDERS``: (Opacus' values, dp-accounting's values). Cached, read-only."""
    q, sigma = float(sample_rate), float(noise_multiplier)
    if q >= 1.0:
        exact = ORDERS / (2 * sigma**2)
        exact.setflags(write=False)
        return exact, exact
    log_a_int = _log_a_int(q, sigma)
    log_a_op, log_a_dp = _log_a_frac(q, sigma)
    op = np.empty_like(ORDERS)
    dp = np.empty_like(ORDERS)
    op[_INT] = dp[_INT] = log_a_int / (_INT_ORDERS - 1)
    op[_FRAC] = log_a_op / (_FRAC_ORDERS - 1)
    dp[_FRAC] = log_a_dp / (_FRAC_ORDERS - 1)
    op.setflags(write=False)
    dp.setflags(write=False)
    return op, dp


def epsilon_opacus(rdp: np.ndarray, delta: float, orders: np.ndarray = ORDERS) -> np.ndarray:
    """Opacus' ``get_privacy_spent`` for each row of ``rdp`` (rows: ledgers, columns: ``orders``)."""
    a = orders
    with np.errstate(invalid="ignore"):
        eps = rdp - (math.log(delta) + np.log(a)) / (a - 1) + np.log((a - 1) / a)
    all_nan = np.isnan(eps).all(axis=-1)
    eps = np.where(np.isnan(eps), np.inf, eps)
    best = eps.min(axis=-1)
    return np.where(all_nan, np.inf, best)


def epsilon_dpacc(rdp: np.ndarray, delta: float) -> np.ndarray:
    """dp-accounting's ``compute_epsilon`` for each row of ``rdp``."""
    a = ORDERS
    with np.errstate(invalid="ignore", over="ignore"):
        formula = rdp + np.log1p(-1 / a) - np.log(delta * a) / (a - 1)
        kl_zero = delta**2 + np.expm1(-rdp) > 0
    eps = np.where(a > 1.01, formula, np.inf)
    eps = np.where(kl_zero, 0.0, eps)
    eps = np.where(rdp < 0, 0.0, eps)
    eps = np.where(np.isnan(eps), np.inf, eps)
    return np.maximum(0.0, eps.min(axis=-1))


def epsilon(rdp_opacus: np.ndarray, rdp_dpacc: np.ndarray, delta: float) -> np.ndarray:
    """The larger of the two libraries' epsilons (conservative), per row."""
    return np.maximum(epsilon_opacus(rdp_opacus, delta), epsilon_dpacc(rdp_dpacc, delta))
