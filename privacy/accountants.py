"""Accountants: a ledger (a sequence of releases) in, epsilon(delta) or delta(epsilon) out, by name.

One registry (in the style of Opacus' ``accountants/registry.py``) maps each name to an ``Accountant``
class; every public function dispatches through it, so a new accountant is one registered class:

- ``pld`` (default): dp-accounting privacy loss distributions, pessimistic (connect-the-dots), so an
  upper bound; the tightest of the three. See ``privacy._pld``.
- ``prv``: Opacus' PRV accountant, its upper bound (estimate + eps_error: 0.01, tighter for small
  epsilons). See ``privacy._prv``.
- ``rdp``: Renyi DP over a dense grid of orders, computed the way Opacus and the way dp-accounting do it;
  the larger epsilon is reported (they differ at fractional orders). See ``privacy._rdp``.

Neighbouring relation: every public function takes a keyword-only ``neighbouring`` - ``"add-remove"``
(the default; one record added or removed: the numbers dpfl always gave) or ``"replace-one"`` (same size,
one record replaced by another). Each accountant class declares the relations it supports in ``relations``;
asking one for another relation raises ``UnsupportedRelationError`` (a ValueError that names the accountant,
the relation and the fix), an unknown relation name a ValueError listing ``NEIGHBOURING_RELATIONS``. Only
``pld`` supports replace-one (dp-accounting's REPLACE_ONE Poisson-sampled Gaussian, see ``privacy._pld``);
``prv`` (Opacus models remove-one only) and ``rdp`` (dp-accounting's RDP refuses replace-one for Poisson
sampling) refuse it, and ``replace_one_cross_check`` (group privacy of size 2 over add/remove) is the
independent upper bound that stands in for them. The relation is part of every cache key.

Every number is cached per process by the ledger's release parameters (never by round number), so
identical ledgers - the clients of an IID federation - cost one computation, and ``epsilon_per_release``
composes one release at a time instead of recomputing every prefix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant as dp_rdp

from dpfl.privacy import _pld, _prv, _rdp
from dpfl.privacy._pld import LRU
from dpfl.privacy.releases import DpSgdRelease, GaussianRelease, Release

__all__ = [
    "ACCOUNTANTS", "ACCOUNTANT_REGISTRY", "DEFAULT_ACCOUNTANT", "DEFAULT_NEIGHBOURING", "NEIGHBOURING_RELATIONS",
    "Accountant", "UnknownAccountantError", "UnsupportedRelationError", "accountants_for", "check_delta",
    "check_neighbouring", "clear_caches", "delta_for_epsilon", "epsilon", "epsilon_all", "epsilon_per_release",
    "get_accountant", "ledger_params", "rdp_cumulative", "register_accountant", "replace_one_cross_check",
]

Params = tuple[tuple[float, float, int], ...]  # (noise multiplier, sample rate, steps) per release

NEIGHBOURING_RELATIONS: tuple[str, ...] = (_pld.ADD_REMOVE, _pld.REPLACE_ONE)  # ("add-remove", "replace-one")
DEFAULT_NEIGHBOURING = _pld.ADD_REMOVE


def check_neighbouring(neighbouring: object) -> str:
    """``neighbouring`` if it names a relation in NEIGHBOURING_RELATIONS, else a ValueError listing them."""
    if not isinstance(neighbouring, str) or neighbouring not in NEIGHBOURING_RELATIONS:
        raise ValueError(f"neighbouring relation {neighbouring!r} is not known: expected one of "
                         f"{', '.join(NEIGHBOURING_RELATIONS)}")
    return neighbouring


class UnsupportedRelationError(ValueError):
    """A known accountant asked for a neighbouring relation it does not support.

    The message names the accountant, the relation, what the accountant does support and the fix (an
    accountant that supports the relation, or the relation it supports). ``accountant``, ``relation``
    and ``supported`` hold the same as attributes.
    """

    def __init__(self, accountant: str, relation: str, supported: Sequence[str], why: str = "") -> None:
        self.accountant, self.relation, self.supported = accountant, relation, tuple(supported)
        others = [n for n, c in ACCOUNTANT_REGISTRY.items() if relation in c.relations and n != accountant]
        fixes = [f"use accountant={others[0]} for {relation}"] if others else []
        fixes += [f"use neighbouring={r}" for r in self.supported[:1]]
        reason = f": {why}" if why else ""
        super().__init__(f"accountant {accountant!r} does not support the {relation} neighbouring relation "
                         f"(it supports {', '.join(self.supported)}){reason}; {' or '.join(fixes)}")


class Accountant:
    """One way of turning a ledger's release parameters into epsilon(delta) and delta(epsilon).

    Subclasses set ``name`` and ``description`` (the report's words for it) and implement the three
    computations on ``Params``; caching, validation and dispatch live in this module's public functions.

    ``relations`` declares the neighbouring relations the class can account for (add/remove unless it says
    more); an instance is bound to one of them, ``neighbouring``, and computes under it. Constructing one
    for another relation raises ``UnsupportedRelationError`` (``unsupported_why`` says why, for the message).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    exact_prefixes: ClassVar[bool] = True  # epsilon_per_release equals epsilon of every prefix exactly
    relations: ClassVar[tuple[str, ...]] = (DEFAULT_NEIGHBOURING,)
    unsupported_why: ClassVar[str] = ""
    neighbouring: str = DEFAULT_NEIGHBOURING  # instance attribute; the class default for subclass __init__s

    def __init__(self, neighbouring: str = DEFAULT_NEIGHBOURING) -> None:
        self.neighbouring = self.check_relation(neighbouring)

    @classmethod
    def check_relation(cls, neighbouring: object) -> str:
        """``neighbouring`` if this class supports it; ValueError (unknown) / UnsupportedRelationError."""
        relation = check_neighbouring(neighbouring)
        if relation not in cls.relations:
            raise UnsupportedRelationError(cls.name, relation, cls.relations, cls.unsupported_why)
        return relation

    def cache_key(self, params: Params) -> tuple:
        """The part of a ledger this accountant's answer depends on (so more ledgers share a cache entry)."""
        return params

    def epsilon(self, key: tuple, delta: float) -> float:
        raise NotImplementedError

    def epsilon_per_release(self, params: Params, delta: float) -> tuple[float, ...]:
        raise NotImplementedError

    def delta(self, params: Params, eps: float) -> float:
        raise NotImplementedError


ACCOUNTANT_REGISTRY: dict[str, type[Accountant]] = {}


def register_accountant(cls: type[Accountant]) -> type[Accountant]:
    """Class decorator: make ``cls`` available by ``cls.name`` everywhere an accountant is named.

    A name already taken by another class is refused: results are cached by name, so a replacement would
    be served the old class's epsilons.
    """
    taken = ACCOUNTANT_REGISTRY.get(cls.name)
    if taken is not None and taken is not cls:
        raise ValueError(f"accountant {cls.name!r} is already registered by {taken.__qualname__}")
    ACCOUNTANT_REGISTRY[cls.name] = cls
    return cls


DEFAULT_ACCOUNTANT = "pld"


class UnknownAccountantError(ValueError):
    """An accountant name this package does not know; the message lists the known ones."""

    def __init__(self, name: object) -> None:
        super().__init__(f"accountant {name!r} is not known: expected one of {', '.join(ACCOUNTANT_REGISTRY)}")


def get_accountant(name: str, *, neighbouring: str = DEFAULT_NEIGHBOURING) -> Accountant:
    """The registered accountant called ``name``, computing under ``neighbouring``.

    Raises ValueError for an unknown relation (before anything else), UnknownAccountantError for an unknown
    name and UnsupportedRelationError when the accountant does not support the relation.
    """
    relation = check_neighbouring(neighbouring)
    cls = ACCOUNTANT_REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise UnknownAccountantError(name)
    cls.check_relation(relation)
    # add-remove: the plain constructor, as before (a registered subclass may define its own __init__)
    return cls() if relation == DEFAULT_NEIGHBOURING else cls(neighbouring=relation)


def accountants_for(neighbouring: str = DEFAULT_NEIGHBOURING) -> tuple[str, ...]:
    """The built-in accountants (``ACCOUNTANTS``) that support ``neighbouring``, in their usual order."""
    relation = check_neighbouring(neighbouring)
    return tuple(n for n in ACCOUNTANTS if relation in ACCOUNTANT_REGISTRY[n].relations)


# --- validation ----------------------------------------------------------------------------------------
def check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, int | float | np.floating) or not (0 < delta < 1):
        raise ValueError(f"delta {delta!r} is not valid: expected a number in (0, 1)")
    return float(delta)


def ledger_params(releases: Sequence[Release]) -> Params:
    """What the accountants need from a ledger; the mechanism is a Poisson-subsampled Gaussian either way."""
    out = []
    for i, r in enumerate(releases):
        if not isinstance(r, DpSgdRelease | GaussianRelease):
            raise TypeError(f"release {i} is a {type(r).__name__}, expected DpSgdRelease or GaussianRelease "
                            "(use release_from_dict for ledger entries)")
        out.append((r.noise_multiplier, r.sample_rate, r.steps))
    return tuple(out)


# --- RDP -----------------------------------------------------------------------------------------------
def rdp_cumulative(params: Params) -> tuple[np.ndarray, np.ndarray]:
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


# --- the registered accountants -----------------------------------------------------------------------------
@register_accountant
class PldAccountant(Accountant):
    """Add/remove and replace-one: dp-accounting's Poisson-sampled Gaussian PLD under either relation, with
    sensitivity 1 (one record's clipped contribution; replace-one's model puts the replaced record and its
    replacement at -1 and +1, so the 2C a replacement can move the sum is already in it). See ``_pld``."""

    name = "pld"
    description = ("privacy loss distributions (Google dp-accounting, pessimistic discretisation): an upper "
                   "bound on epsilon, and the tightest sound accountant dpfl offers")
    relations = NEIGHBOURING_RELATIONS

    def cache_key(self, params: Params) -> tuple:
        return tuple(_pld.runs_of(params))

    def epsilon(self, key: tuple, delta: float) -> float:
        return _pld.epsilon(key, delta, **_pld.relation_kwargs(self.neighbouring))

    def epsilon_per_release(self, params: Params, delta: float) -> tuple[float, ...]:
        return tuple(_pld.epsilon_per_release(params, delta, **_pld.relation_kwargs(self.neighbouring)))

    def delta(self, params: Params, eps: float) -> float:
        return min(1.0, _pld.delta(tuple(_pld.runs_of(params)), eps, **_pld.relation_kwargs(self.neighbouring)))


@register_accountant
class PrvAccountant(Accountant):
    """Add/remove only: Opacus' PRV is the remove-one privacy random variable (no replace-one variant), so
    replace-one is refused; ``pld`` (or ``replace_one_cross_check``) gives replace-one numbers."""

    name = "prv"
    description = "privacy random variables (Opacus PRV accountant): the upper end of its error bound"
    exact_prefixes = False  # prefixes share the whole ledger's discretisation: upper bounds, within 2 eps_error
    relations = _prv.RELATIONS
    unsupported_why = "Opacus' PRV accountant models add/remove adjacency only"

    def cache_key(self, params: Params) -> tuple:
        return _prv.merged(params)

    def _eps_error(self, params: Params, delta: float) -> float:
        op, dp = rdp_cumulative(_prv.merged(params))
        return _prv.eps_error_for(float(_rdp.epsilon(op[-1:], dp[-1:], delta)[0]))

    def epsilon(self, key: tuple, delta: float) -> float:
        return _prv.epsilon(key, delta, self._eps_error(key, delta))

    def epsilon_per_release(self, params: Params, delta: float) -> tuple[float, ...]:
        return tuple(_prv.epsilon_per_release(params, delta, self._eps_error(params, delta)))

    def delta(self, params: Params, eps: float, rel_tol: float = 0.01) -> float:
        """PRV has no delta(epsilon) bound of its own: bisect on log(delta) for the smallest delta whose
        epsilon upper bound is <= eps, starting from PLD's (tight) answer. Returns the upper end."""

        def ok(d: float) -> bool:
            try:
                return _cached_epsilon(self, params, d) <= eps
            except ValueError:  # PRV cannot resolve a delta this small: it certifies nothing there
                return False

        hi = min(0.5, max(2 * PldAccountant(neighbouring=self.neighbouring).delta(params, eps), 1e-300))
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


@register_accountant
class RdpAccountant(Accountant):
    """Add/remove only. dp-accounting's RdpAccountant refuses REPLACE_ONE for Poisson-sampled events (its
    replace-one RDP is for sampling without replacement), and Opacus has no replace-one RDP, so replace-one
    is refused here rather than approximated. What stands in as an independent replace-one figure is
    ``replace_one_cross_check``: a replacement is a removal then an addition, so group privacy of size 2
    over this (or any) add/remove accountant bounds replace-one epsilon from above; ``pld`` gives the
    tight replace-one number."""

    name = "rdp"
    description = ("Renyi differential privacy (Opacus and dp-accounting conversions, the larger is "
                   "reported): a looser but classic upper bound")
    relations = _rdp.RELATIONS
    unsupported_why = "dp-accounting's RDP accountant refuses replace-one for Poisson sampling"

    def epsilon(self, key: tuple, delta: float) -> float:
        op, dp = rdp_cumulative(key)
        return float(_rdp.epsilon(op[-1:], dp[-1:], delta)[0])

    def epsilon_per_release(self, params: Params, delta: float) -> tuple[float, ...]:
        op, dp = rdp_cumulative(params)
        return tuple(float(e) for e in _rdp.epsilon(op, dp, delta))

    def delta(self, params: Params, eps: float) -> float:
        op, dp = rdp_cumulative(params)
        return _rdp_delta(op[-1], dp[-1], eps)


ACCOUNTANTS: tuple[str, ...] = tuple(ACCOUNTANT_REGISTRY)  # the built-in ones (the run config's choices)


# --- caches ----------------------------------------------------------------------------------------------
_EPSILON = LRU(65536)  # (accountant, relation, canonical ledger key, delta) -> epsilon
_PER_RELEASE = LRU(4096)  # (accountant, relation, params, delta) -> epsilons after each release


def _cached_epsilon(acc: Accountant, params: Params, delta: float) -> float:
    key = acc.cache_key(params)
    return _EPSILON.get_or_compute((acc.name, acc.neighbouring, key, delta), lambda: acc.epsilon(key, delta))


# --- public API ----------------------------------------------------------------------------------------
def epsilon(releases: Sequence[Release], delta: float, accountant: str = DEFAULT_ACCOUNTANT, *,
            neighbouring: str = DEFAULT_NEIGHBOURING) -> float:
    """Cumulative epsilon of a ledger at delta (an upper bound) under ``neighbouring``; 0.0 when empty.

    UnsupportedRelationError when ``accountant`` does not support the relation (replace-one: pld only).
    """
    acc = get_accountant(accountant, neighbouring=neighbouring)
    delta = check_delta(delta)
    params = ledger_params(releases)
    return _cached_epsilon(acc, params, delta) if params else 0.0


def epsilon_per_release(releases: Sequence[Release], delta: float,
                        accountant: str = DEFAULT_ACCOUNTANT, *,
                        neighbouring: str = DEFAULT_NEIGHBOURING) -> list[float]:
    """Cumulative epsilon after each release (every prefix of the ledger), composed incrementally.

    Accountants with ``exact_prefixes`` (``rdp``, ``pld``) equal ``epsilon`` of each prefix exactly; ``prv``
    uses the whole ledger's discretisation for every prefix, which keeps each value an upper bound and
    within 2 x eps_error of a fresh computation. ``neighbouring`` as for ``epsilon``.
    """
    acc = get_accountant(accountant, neighbouring=neighbouring)
    delta = check_delta(delta)
    params = ledger_params(releases)
    if not params:
        return []

    def compute() -> tuple[float, ...]:
        out = acc.epsilon_per_release(params, delta)
        if acc.exact_prefixes:  # every prefix is now known: serve later epsilon() calls
            for n, eps in enumerate(out, start=1):
                _EPSILON.put((acc.name, acc.neighbouring, acc.cache_key(params[:n]), delta), eps)
        return out

    return list(_PER_RELEASE.get_or_compute((acc.name, acc.neighbouring, params, delta), compute))


def epsilon_all(releases: Sequence[Release], delta: float, *,
                neighbouring: str = DEFAULT_NEIGHBOURING) -> dict[str, float]:
    """Every built-in accountant's epsilon side by side (for reports: RDP and PRV as cross-checks of PLD).

    Under a relation some accountants do not support, those are *left out* of the dict (never None, never
    an add/remove number): replace-one gives ``{"pld": ...}`` alone; ``accountants_for(neighbouring)`` lists
    the keys. Add-remove gives every built-in accountant, as before.
    """
    return {name: epsilon(releases, delta, name, neighbouring=neighbouring)
            for name in accountants_for(neighbouring)}


def delta_for_epsilon(releases: Sequence[Release], epsilon: float,
                      accountant: str = DEFAULT_ACCOUNTANT, *,
                      neighbouring: str = DEFAULT_NEIGHBOURING) -> float:
    """Smallest delta (an upper bound) for which the ledger is (epsilon, delta)-DP under ``neighbouring``;
    0.0 when empty."""
    acc = get_accountant(accountant, neighbouring=neighbouring)
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float | np.floating) \
            or not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon {epsilon!r} is not valid: expected a finite number >= 0")
    params = ledger_params(releases)
    return acc.delta(params, float(epsilon)) if params else 0.0


def replace_one_cross_check(releases: Sequence[Release], delta: float, *, accountant: str = DEFAULT_ACCOUNTANT,
                            max_iterations: int = 50) -> float:
    """An independent upper bound on the replace-one epsilon at ``delta``, from add/remove accounting.

    Replacing a record is removing it and then adding its replacement, so by group privacy of size 2 an
    (e, d) add/remove ledger is (2e, (1 + e^e) d) replace-one. With d0 = delta / (1 + e^E) for some E and
    e0 = eps_addremove(d0) <= E, the ledger is (2 e0, d0 (1 + e^e0)) with d0 (1 + e^e0) <= delta: so 2 e0
    is sound at ``delta``. E is found by fixed-point iteration (e0 grows slowly as d0 shrinks), with a
    little slack so the condition holds exactly. ``accountant`` is the add/remove accountant used (any
    built-in one: ``rdp`` makes the bound independent of the PLD code entirely). It is looser than the
    ``pld`` replace-one epsilon, which it bounds (tests check pld <= this): a sanity check, not a
    replacement. ValueError if no E is found in ``max_iterations``.
    """
    delta = check_delta(delta)
    get_accountant(accountant)
    if not releases:
        return 0.0
    e_big = epsilon(releases, delta, accountant)
    for _ in range(max_iterations):
        d0 = delta / (1.0 + math.exp(min(e_big, 700.0)))
        if d0 <= 0.0:
            break
        e0 = epsilon(releases, d0, accountant)
        if e0 <= e_big:  # then d0 (1 + e^e0) <= d0 (1 + e^E) = delta: (2 e0, delta) replace-one
            return 2.0 * e0
        e_big = e0 * (1.0 + 1e-3) + 1e-9
    raise ValueError(f"replace-one cross-check did not converge at delta={delta:g} with {accountant}")


def clear_caches() -> None:
    """Forget every cached result (benchmarks measure cold timings with this)."""
    _EPSILON.clear()
    _PER_RELEASE.clear()
    _rdp.rdp_one_step.cache_clear()
    _pld.clear_caches()
