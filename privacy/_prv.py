"""Opacus' PRV accountant (Gopi, Lee & Wutschitz 2021) for ledgers of Poisson-subsampled Gaussians.

``epsilon`` feeds ``PRVAccountant.history`` with the ledger and reports the upper bound
(estimate + eps_error, see ``eps_error_for``). Composition is commutative, so identical (sigma, q)
entries are merged first: Opacus computes an RDP bound and a numerical mean for every history entry,
which makes an unmerged 100-round ledger ~100x slower for the same number.

``epsilon_per_release`` is incremental: it discretises every distinct (sigma, q) once on the domain
Opacus would choose for the *whole* ledger and convolves one release at a time. That domain is at least
as wide and as fine as any prefix needs (its tail bounds and mesh come from the total number of
compositions), so every prefix's upper bound stays valid; it can differ from a fresh computation of the
prefix (on the prefix's own, coarser domain) by up to the error bound, 2 x eps_error. The running
composition is kept as a product of spectra (Opacus composes identical PRVs the same way), so each
release costs one power and one inverse FFT.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis.prv import (
    DiscretePRV,
    PoissonSubsampledGaussianPRV,
    TruncatedPrivacyRandomVariable,
    discretize,
)
from scipy import fft as sp_fft

EPS_ERROR_MAX, EPS_ERROR_MIN, EPS_ERROR_RELATIVE = 0.01, 0.002, 0.005


def eps_error_for(rough_epsilon: float) -> float:
    """Opacus' additive error bound: its default 0.01, tighter for small epsilons (~0.5 % of a rough
    estimate, down to 0.002) so the upper bound stays within ~1 % where it would otherwise be 6 %."""
    return min(EPS_ERROR_MAX, max(EPS_ERROR_MIN, EPS_ERROR_RELATIVE * rough_epsilon))

Run = tuple[float, float, int]


def merged(params: Sequence[tuple[float, float, int]]) -> tuple[Run, ...]:
    """Sum the steps of identical (sigma, q), in order of first appearance."""
    steps: dict[tuple[float, float], int] = {}
    for sigma, q, n in params:
        steps[(sigma, q)] = steps.get((sigma, q), 0) + n
    return tuple((sigma, q, n) for (sigma, q), n in steps.items())


@contextmanager
def _quiet() -> Iterator[None]:
    """Opacus' PRV takes log(1 - q), -inf at q = 1 (harmless), and its internal RDP bound warns about
    the order range: neither says anything about the result, so keep the output clean."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _fail(what: str, delta: float, exc: Exception) -> ValueError:
    return ValueError(f"the PRV accountant cannot compute {what} at delta={delta:g} ({exc}); "
                      "use the 'pld' accountant for this ledger")


def epsilon(history: tuple[Run, ...], delta: float, eps_error: float) -> float:
    acc = PRVAccountant()
    acc.history = list(history)
    try:
        with _quiet():
            return float(acc.get_epsilon(delta=delta, eps_error=eps_error))
    except (RuntimeError, ValueError) as exc:
        raise _fail("epsilon", delta, exc) from None


def epsilon_per_release(params: Sequence[tuple[float, float, int]], delta: float,
                        eps_error: float) -> list[float]:
    history = merged(params)
    delta_error = delta / 1000  # Opacus' default
    try:
        with _quiet():
            acc = PRVAccountant()
            acc.history = list(history)
            prvs = {(s, q): PoissonSubsampledGaussianPRV(q, s) for s, q, _ in history}
            domain = acc._get_domain(prvs=list(prvs.values()),
                                     num_self_compositions=[n for _, _, n in history],
                                     eps_error=eps_error, delta_error=delta_error)
            dprvs = {k: discretize(TruncatedPrivacyRandomVariable(p, domain.t_min, domain.t_max), domain)
                     for k, p in prvs.items()}
            size = domain.size
            period = sp_fft.next_fast_len(size, real=True)  # zero-padding a circular convolution only helps
            spectra = {k: sp_fft.rfft(d.pmf, period) for k, d in dprvs.items()}
            powers: dict[tuple[float, float, int], np.ndarray] = {}
            out: list[float] = []
            # Composition in the Fourier domain, as Opacus' _compose_fourier does for one PRV: the running
            # product of spectra is the composed PRV so far; one inverse FFT per release reads it out.
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
    except (RuntimeError, ValueError) as exc:
        raise _fail("per-release epsilons", delta, exc) from None
