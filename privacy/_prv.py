"""Opacus' PRV accountant (Gopi, Lee & Wutschitz 2021) for ledgers of Poisson-subsampled Gaussians.

``epsilon`` is the upper bound (estimate + eps_error, see ``eps_error_for``) that Opacus'
``PRVAccountant`` gives for the ledger as its ``history``: the same domain (``_get_domain``: RDP tail
bounds at Opacus' own orders, its mesh), the same truncated, mean-corrected discretisation
(``discretize``), composition by powers of spectra (``_compose_fourier``) and the same read-out
(``DiscretePRV.compute_epsilon``). Two things are faster, which is why this is not a plain
``PRVAccountant.get_epsilon`` call: the RDP bounds come from ``privacy._rdp`` (Opacus' per-order Python
loops were half the time) and the FFT period is padded to a fast length (Opacus' domain sizes are often
slow ones; padding a circular convolution only reduces wrap-around). Tests check the result equals
``PRVAccountant.get_epsilon`` to 1e-6. Composition is commutative, so identical (sigma, q) are merged.

``epsilon_per_release`` is incremental: it discretises every distinct (sigma, q) once on the domain for
the *whole* ledger and multiplies in one release's spectrum at a time. That domain is at least as wide
and as fine as any prefix needs (its tail bounds and mesh come from the total number of compositions),
so every prefix's upper bound stays valid; it can differ from a fresh computation of the prefix (on
the prefix's own, coarser domain) by up to the error bound, 2 x eps_error.

Add/remove adjacency only (``RELATIONS``). Opacus' ``PoissonSubsampledGaussianPRV`` is the privacy random
variable of Gopi et al.'s Propositions B1/B4: ln of q N(1, sigma^2) + (1 - q) N(0, sigma^2) over
N(0, sigma^2), the remove-one pair; there is no replace-one variant (mixtures on both sides) and its
domain comes from add/remove RDP bounds. The ``prv`` accountant therefore refuses replace-one
(``accountants.UnsupportedRelationError``) rather than report an add/remove number under that name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.prv import (
    DiscretePRV,
    Domain,
    PoissonSubsampledGaussianPRV,
    TruncatedPrivacyRandomVariable,
    discretize,
)
from scipy import fft as sp_fft

from dpfl.privacy import _rdp

RELATIONS: tuple[str, ...] = ("add-remove",)  # the neighbouring relations this PRV models
EPS_ERROR_MAX, EPS_ERROR_MIN, EPS_ERROR_RELATIVE = 0.01, 0.002, 0.005


def eps_error_for(rough_epsilon: float) -> float:
    """Opacus' additive error bound: its default 0.01, tighter for small epsilons (~0.5 % of a rough
    estimate, down to 0.002) so the upper bound stays within ~1 % where it would otherwise be 6 %."""
    return min(EPS_ERROR_MAX, max(EPS_ERROR_MIN, EPS_ERROR_RELATIVE * rough_epsilon))

Run = tuple[float, float, int]
# Opacus' PRV bounds its domain with its RDPAccountant's default orders, a subset of _rdp.ORDERS.
_OPACUS_ALPHAS = np.array([list(_rdp.ORDERS).index(a) for a in RDPAccountant.DEFAULT_ALPHAS])


def merged(params: Sequence[tuple[float, float, int]]) -> tuple[Run, ...]:
    """Sum the steps of identical (sigma, q), in order of first appearance."""
    steps: dict[tuple[float, float], int] = {}
    for sigma, q, n in params:
        steps[(sigma, q)] = steps.get((sigma, q), 0) + n
    return tuple((sigma, q, n) for (sigma, q), n in steps.items())


def _quiet() -> np.errstate:
    """Opacus' PRV takes log(1 - q), -inf at q = 1, where it is harmless: keep the output clean."""
    return np.errstate(divide="ignore", invalid="ignore", over="ignore")


def _fail(what: str, delta: float, exc: Exception) -> ValueError:
    return ValueError(f"the PRV accountant cannot compute {what} at delta={delta:g} ({exc}); "
                      "use the 'pld' accountant for this ledger")


def _opacus_rdp_epsilon(history: Sequence[Run], delta: float) -> float:
    """Opacus' ``RDPAccountant(history).get_epsilon(delta)`` (its default orders), via the fast RDP port."""
    total = sum(n * _rdp.rdp_one_step(sigma, q)[0][_OPACUS_ALPHAS] for sigma, q, n in history)
    return float(_rdp.epsilon_opacus(total, delta, _rdp.ORDERS[_OPACUS_ALPHAS]))


def _domain(history: Sequence[Run], eps_error: float, delta_error: float) -> Domain:
    """The discretisation domain Opacus' PRVAccountant chooses (``_get_domain``) for this history."""
    total = sum(n for _, _, n in history)
    tail = _opacus_rdp_epsilon(history, delta_error / 4)
    for sigma, q, _ in history:
        tail = max(tail, _opacus_rdp_epsilon([(sigma, q, 1)], delta_error / (8 * total)))
    half_width = max(tail, eps_error) + 3
    mesh = eps_error / math.sqrt(total * math.log(12 / delta_error) / 2)
    return Domain.create_aligned(-half_width, half_width, mesh)


def _compose(history: Sequence[Run], params: Sequence[tuple[float, float, int]], delta: float,
             eps_error: float) -> list[float]:
    """Epsilon upper bound after each of ``params``, all discretised on ``history``'s domain.

    As Opacus' ``_compose_fourier``, composition is a power of each PRV's spectrum; the running product
    of spectra is the composition so far and one inverse FFT reads it out. The period is padded to a
    fast FFT length (Opacus' domain sizes are often slow ones); padding a circular convolution only
    reduces wrap-around.
    """
    delta_error = delta / 1000  # Opacus' default
    domain = _domain(history, eps_error, delta_error)
    truncated = {(s, q): TruncatedPrivacyRandomVariable(PoissonSubsampledGaussianPRV(q, s), domain.t_min,
                                                        domain.t_max) for s, q, _ in history}
    dprvs = {k: discretize(prv, domain) for k, prv in truncated.items()}
    size = domain.size
    period = sp_fft.next_fast_len(size, real=True)
    spectra = {k: sp_fft.rfft(d.pmf, period) for k, d in dprvs.items()}
    powers: dict[tuple[float, float, int], np.ndarray] = {}
    out: list[float] = []
    cum, count, shift = np.ones(period // 2 + 1, dtype=complex), 0, 0.0
    for sigma, q, n in params:
        if (sigma, q, n) not in powers:
            powers[(sigma, q, n)] = spectra[(sigma, q)] ** n
        cum = cum * powers[(sigma, q, n)]
        count += n
        shift += n * dprvs[(sigma, q)].domain.shifts
        # Index 0 of the domain is t_min = -(size/2 - 1) dt; a sum of `count` losses starts at
        # count * t_min, so the window [t_min, t_max] begins (count - 1)(size/2 - 1) bins later.
        start = ((count - 1) * (size // 2 - 1)) % period
        pmf = np.roll(sp_fft.irfft(cum, period), -start)[:size]
        composed = DiscretePRV(pmf=pmf, domain=domain.shift_right(shift))
        out.append(float(composed.compute_epsilon(delta, delta_error, eps_error)[2]))
    return out


def epsilon(history: tuple[Run, ...], delta: float, eps_error: float) -> float:
    """Upper bound of Opacus' PRVAccountant with this (merged) history."""
    try:
        with _quiet():
            return _compose(history, history, delta, eps_error)[-1]
    except (RuntimeError, ValueError) as exc:
        raise _fail("epsilon", delta, exc) from None


def epsilon_per_release(params: Sequence[tuple[float, float, int]], delta: float,
                        eps_error: float) -> list[float]:
    """Upper bound after each release, on the whole ledger's domain (see the module docstring)."""
    try:
        with _quiet():
            return _compose(merged(params), params, delta, eps_error)
    except (RuntimeError, ValueError) as exc:
        raise _fail("per-release epsilons", delta, exc) from None
