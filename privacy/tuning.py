"""Tuning accounting: the privacy cost of choosing one result among several DP runs on the same records.

Releasing the best of several runs reveals something about all of them, so its guarantee is not the
selected run's own epsilon. Every number here comes from the accountants that keep a run's ledger
(``dpfl.privacy.accountants``, its RDP from ``dpfl.privacy._rdp``, its PLD from ``dpfl.privacy._pld``), so
a sweep's tuning epsilon and a run's ledger cannot disagree about the same releases:

- ``composed_epsilon``: every run splits the records over clients the same way, so a client is the same
  records in every run. Each client's releases from all runs are concatenated and composed by the runs'
  accountant (the largest epsilon if the runs used several); max over clients.
- ``rdp_composed_epsilon``: runs with different partitions, where a record may sit at different clients.
  Each run contributes its worst client per RDP order; RDP adds up over runs (sound for any mapping of
  records to clients).
- ``random_search_epsilon``: a random search with a random number of trials K, by Papernot & Steinke,
  "Hyperparameter Tuning with Renyi Differential Privacy" (ICLR 2022): ``poisson_rdp`` and ``tnb_rdp``.

RDP is carried as two curves over ``ORDERS``, Opacus' and dp-accounting's (they differ at fractional
orders), every bound is applied to both, and the larger of the two (epsilon, delta) conversions is
reported, as the ``rdp`` accountant does. Inputs are plain data: one run is a mapping from client to
that client's releases (``Release`` objects, e.g. ``Ledger.releases``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from dpfl.privacy import _pld, _rdp
from dpfl.privacy.accountants import DEFAULT_ACCOUNTANT, check_delta, get_accountant, ledger_params, rdp_cumulative
from dpfl.privacy.accountants import epsilon as ledger_epsilon
from dpfl.privacy.releases import Release

__all__ = [
    "DISTRIBUTIONS", "ORDERS", "Rdp", "RunLedgers", "composed_epsilon", "ledger_rdp", "pld_delta_hat",
    "poisson_eps_hat", "poisson_rdp", "random_search_epsilon", "rdp_composed_epsilon", "rdp_epsilon",
    "tnb_gamma_for_mean", "tnb_mean", "tnb_rdp", "worst_client_rdp",
]

ORDERS: np.ndarray = _rdp.ORDERS
DISTRIBUTIONS = ("poisson", "truncated-negative-binomial")  # of the number of trials K
RunLedgers = Mapping[str, Sequence[Release]]  # one run: client -> that client's releases
Rdp = tuple[np.ndarray, np.ndarray]  # RDP over ORDERS: (Opacus' values, dp-accounting's values)


# --- RDP curves ---------------------------------------------------------------------------------------------
def _zeros() -> Rdp:
    return np.zeros(len(ORDERS)), np.zeros(len(ORDERS))


def ledger_rdp(releases: Sequence[Release]) -> Rdp:
    """RDP of one ledger: the sum of its releases' RDP, each curve as its library computes it."""
    params = ledger_params(releases)
    if not params:
        return _zeros()
    op, dp = rdp_cumulative(params)
    return op[-1], dp[-1]


def _max_rdp(curves: Iterable[Rdp]) -> Rdp:
    """Per order, the largest of the curves (zero when there is none)."""
    op, dp = _zeros()
    for one_op, one_dp in curves:
        op, dp = np.maximum(op, one_op), np.maximum(dp, one_dp)
    return op, dp


def _distinct(ledgers: Iterable[Sequence[Release]]) -> list[Sequence[Release]]:
    """One ledger per distinct parameter sequence: identical clients cost one computation."""
    return list({ledger_params(r): r for r in ledgers if r}.values())


def worst_client_rdp(run: RunLedgers) -> Rdp:
    """Per order, the max over one run's clients: bounds any record, wherever the run put it."""
    return _max_rdp(ledger_rdp(r) for r in _distinct(run.values()))


def _sum_worst(runs: Sequence[RunLedgers]) -> Rdp:
    op, dp = _zeros()
    for run in runs:
        one_op, one_dp = worst_client_rdp(run)
        op, dp = op + one_op, dp + one_dp
    return op, dp


def rdp_epsilon(rdp: Rdp, delta: float) -> float:
    """(epsilon, delta) of an RDP curve pair: the larger of Opacus' and dp-accounting's conversions."""
    op, dp = rdp
    return float(_rdp.epsilon(np.asarray(op, dtype=float), np.asarray(dp, dtype=float), check_delta(delta)))


# --- grids: composition of every private run ---------------------------------------------------------------
def composed_epsilon(runs: Sequence[RunLedgers], delta: float,
                     accountants: Iterable[str] = (DEFAULT_ACCOUNTANT,)) -> float:
    """Runs with one partition: per client, all runs' releases concatenated and composed by each of
    ``accountants`` (the runs' own); the largest epsilon over accountants and clients (0.0: no release)."""
    names = sorted(set(accountants)) or [DEFAULT_ACCOUNTANT]
    for name in names:
        get_accountant(name)
    per_client: dict[str, list[Release]] = {}
    for run in runs:
        for client, releases in run.items():
            per_client.setdefault(client, []).extend(releases)
    ledgers = _distinct(per_client.values())
    return max((ledger_epsilon(r, delta, name) for name in names for r in ledgers), default=0.0)


def rdp_composed_epsilon(runs: Sequence[RunLedgers], delta: float) -> float:
    """Runs with different partitions: RDP composition of each run's worst client, then (epsilon, delta)."""
    return rdp_epsilon(_sum_worst(runs), delta)


# --- the number of trials of a random search ---------------------------------------------------------------
def tnb_mean(eta: float, gamma: float) -> float:
    """E[K] of the truncated negative binomial D_{eta,gamma} (Papernot & Steinke 2022)."""
    if eta == 0:
        return (1 / gamma - 1) / math.log(1 / gamma)
    return eta * (1 - gamma) / (gamma * (1 - gamma ** eta))


def tnb_gamma_for_mean(eta: float, mean: float) -> float:
    """The gamma giving E[K] = mean (E[K] decreases in gamma); bisection on log(gamma)."""
    if not mean > 1:
        raise ValueError(f"mean number of trials {mean!r} is not valid: the truncated negative binomial has "
                         "mean > 1; ask for more trials")
    lo, hi = 1e-12, 1 - 1e-12
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if tnb_mean(eta, mid) > mean:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


# --- Papernot & Steinke -------------------------------------------------------------------------------------
def poisson_eps_hat(orders: np.ndarray = ORDERS) -> np.ndarray:
    """The largest eps_hat the Poisson theorem allows at each order: log(1 + 1/(lambda - 1))."""
    return np.log1p(1.0 / (np.asarray(orders, dtype=float) - 1.0))


def pld_delta_hat(releases: Sequence[Release], eps: np.ndarray) -> np.ndarray:
    """delta of a ledger at many epsilons at once, from the PLD its ``pld`` accountant builds (pessimistic,
    so upper bounds; equal to ``delta_for_epsilon(releases, e, "pld")`` for each e, in one pass)."""
    values = np.asarray(eps, dtype=float)
    params = ledger_params(releases)
    if not params:
        return np.zeros(len(values))
    pld = _pld.ledger_pld(tuple(_pld.runs_of(params)))
    order = np.argsort(values)
    out = np.empty(len(values))
    out[order] = np.asarray(pld.get_delta_for_epsilon(values[order]), dtype=float)
    return np.minimum(out, 1.0)


def poisson_rdp(rdp: np.ndarray, delta_hat: np.ndarray, mu: float, orders: np.ndarray = ORDERS) -> np.ndarray:
    """RDP of "run Q K ~ Poisson(mu) times, release the best" (Papernot & Steinke 2022, Poisson case).

    If Q is (lambda, eps)-RDP and (eps_hat, delta_hat)-DP with e^eps_hat <= 1 + 1/(lambda - 1), the tuned
    algorithm is (lambda, eps + mu * delta_hat + log(mu) / (lambda - 1))-RDP. ``delta_hat`` holds, for each
    order, Q's delta at the largest allowed eps_hat = log(1 + 1/(lambda - 1)) (``poisson_eps_hat``)."""
    lam = np.asarray(orders, dtype=float)
    return np.asarray(rdp, dtype=float) + mu * np.asarray(delta_hat, dtype=float) + math.log(mu) / (lam - 1.0)


def tnb_rdp(rdp: np.ndarray, eta: float, gamma: float, orders: np.ndarray = ORDERS) -> np.ndarray:
    """RDP of "run Q K ~ truncated negative binomial D_{eta,gamma} times, release the best"
    (Papernot & Steinke 2022, Theorem 2): for every order lambda, with Q (lambda_hat, eps_hat)-RDP,
    eps' = eps(lambda) + (1 + eta)(1 - 1/lambda_hat) eps_hat + (1 + eta) log(1/gamma) / lambda_hat
           + log(E[K]) / (lambda - 1), minimised over lambda_hat."""
    rdp = np.asarray(rdp, dtype=float)
    lam = np.asarray(orders, dtype=float)
    with np.errstate(invalid="ignore"):
        extra = (1 + eta) * (1 - 1 / lam) * rdp + (1 + eta) * math.log(1 / gamma) / lam
    best = float(np.min(np.where(np.isfinite(extra), extra, np.inf)))
    return rdp + best + math.log(tnb_mean(eta, gamma)) / (lam - 1.0)


def random_search_epsilon(trials: Sequence[RunLedgers], extra: Sequence[RunLedgers], delta: float,
                          distribution: str, mean: float, eta: float = 1.0) -> float:
    """epsilon of the best of K trials (K ~ ``distribution`` with mean ``mean``), plus plain RDP composition
    of ``extra`` runs outside the K trials (reruns of failed trials, points no longer planned).

    Q is one trial: its RDP (and, for Poisson, its delta_hat) is the max over the trials run and their
    clients."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution {distribution!r} is not valid for a random-search bound: expected one "
                         f"of {', '.join(DISTRIBUTIONS)} (a fixed number of trials is plain composition)")
    if not (math.isfinite(mean) and mean > 0):
        raise ValueError(f"mean number of trials {mean!r} is not valid: expected a number > 0")
    delta = check_delta(delta)
    ledgers = _distinct(r for run in trials for r in run.values())
    q_op, q_dp = _max_rdp(ledger_rdp(r) for r in ledgers)
    if distribution == "poisson":
        eps_hat = poisson_eps_hat()
        delta_hat = np.zeros(len(ORDERS))
        for r in ledgers:
            delta_hat = np.maximum(delta_hat, pld_delta_hat(r, eps_hat))
        op, dp = poisson_rdp(q_op, delta_hat, mean), poisson_rdp(q_dp, delta_hat, mean)
    else:
        gamma = tnb_gamma_for_mean(eta, mean)
        op, dp = tnb_rdp(q_op, eta, gamma), tnb_rdp(q_dp, eta, gamma)
    extra_op, extra_dp = _sum_worst(extra)
    return rdp_epsilon((op + extra_op, dp + extra_dp), delta)
