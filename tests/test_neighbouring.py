"""The neighbouring relation as a parameter of every accountant: add-remove (default) and replace-one.

Replace-one numbers are checked against paths that do not go through ``dpfl.privacy._pld``:
dp-accounting's own ``PLDAccountant(neighboring_relation=REPLACE_ONE)`` fed the releases' DpEvents, and,
without sampling (q = 1), the closed-form Gaussian mechanism with sensitivity 2 (replacing one record moves
the clipped sum by up to 2C).
"""

from __future__ import annotations

import math

import dp_accounting
import pytest
from scipy import optimize
from scipy.stats import norm

from dpfl.privacy import (
    ACCOUNTANT_REGISTRY,
    ACCOUNTANTS,
    DEFAULT_NEIGHBOURING,
    NEIGHBOURING_RELATIONS,
    DpSgdRelease,
    GaussianRelease,
    UnsupportedRelationError,
    _pld,
    accountants_for,
    calibrate_noise,
    check_budget,
    clear_caches,
    delta_for_epsilon,
    epsilon,
    epsilon_all,
    epsilon_per_release,
    get_accountant,
    replace_one_cross_check,
)
from dpfl.privacy.accountants import Accountant, RdpAccountant, register_accountant

DELTA = 1e-5
RO, AR = "replace-one", "add-remove"
REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE

LEDGERS = {
    "single": [DpSgdRelease(1.0, 0.01, 1000, 1)],
    "rounds": [DpSgdRelease(1.2, 0.05, 40, r) for r in range(1, 4)],
    "mixed": [DpSgdRelease(0.9, 0.1, 30, 1), DpSgdRelease(1.5, 0.02, 100, 2), GaussianRelease(2.0, 0.3, 5, 3)],
}


def reference_accountant(releases: list) -> dp_accounting.pld.PLDAccountant:
    """dp-accounting's replace-one PLDAccountant on the releases' own DpEvents (not dpfl's _pld), h = 1e-4."""
    acc = dp_accounting.pld.PLDAccountant(neighboring_relation=REPLACE_ONE, value_discretization_interval=1e-4)
    for r in releases:
        acc.compose(r.to_dp_event())
    return acc


def reference_epsilon(releases: list, delta: float = DELTA) -> float:
    return reference_accountant(releases).get_epsilon(delta)


def gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon(delta) of the Gaussian mechanism with sensitivity / std = mu (Balle & Wang 2018)."""
    def excess(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta
    return optimize.brentq(excess, 0.0, 500.0, xtol=1e-12)


# --- the constants and the accountant classes -----------------------------------------------------------
def test_the_relations_and_what_each_accountant_declares() -> None:
    assert NEIGHBOURING_RELATIONS == ("add-remove", "replace-one") and DEFAULT_NEIGHBOURING == "add-remove"
    assert ACCOUNTANT_REGISTRY["pld"].relations == ("add-remove", "replace-one")
    assert ACCOUNTANT_REGISTRY["prv"].relations == ACCOUNTANT_REGISTRY["rdp"].relations == ("add-remove",)
    assert accountants_for(AR) == ACCOUNTANTS and accountants_for(RO) == ("pld",)
    assert get_accountant("pld", neighbouring=RO).neighbouring == RO
    assert get_accountant("pld").neighbouring == AR


def test_defaults_are_unchanged_add_remove() -> None:
    ledger = LEDGERS["rounds"]
    for name in ACCOUNTANTS:
        assert epsilon(ledger, DELTA, name) == epsilon(ledger, DELTA, name, neighbouring=AR)
    assert epsilon_all(ledger, DELTA) == epsilon_all(ledger, DELTA, neighbouring=AR)
    assert set(epsilon_all(ledger, DELTA)) == set(ACCOUNTANTS)


# --- replace-one against independent computations -------------------------------------------------------
@pytest.mark.parametrize("ledger", LEDGERS.values(), ids=LEDGERS.keys())
def test_replace_one_matches_dp_accounting_pld_accountant(ledger: list) -> None:
    ours = epsilon(ledger, DELTA, "pld", neighbouring=RO)
    reference = reference_accountant(ledger)
    ref = reference.get_epsilon(DELTA)
    assert ours == pytest.approx(ref, rel=0.01)
    add_remove = epsilon(ledger, DELTA, "pld")
    assert ours >= add_remove
    assert ours > 1.2 * add_remove  # a real difference, not the add/remove number under another name
    # delta(epsilon) under replace-one agrees too (same PLD, read the other way)
    d = delta_for_epsilon(ledger, ref, neighbouring=RO)
    assert d == pytest.approx(reference.get_delta(ref), rel=0.1) and d > delta_for_epsilon(ledger, ref)


@pytest.mark.parametrize(("sigma", "steps"), [(2.0, 1), (4.0, 10), (8.0, 30)])
def test_without_sampling_replace_one_is_add_remove_at_half_the_noise(sigma: float, steps: int) -> None:
    """q = 1: replacing one record moves the sum by 2C, the Gaussian with sensitivity 2 = sigma / 2."""
    ro = epsilon([DpSgdRelease(sigma, 1.0, steps)], DELTA, neighbouring=RO)
    half = epsilon([DpSgdRelease(sigma / 2, 1.0, steps)], DELTA, neighbouring=AR)
    assert ro == pytest.approx(half, rel=1e-9)
    exact = gaussian_epsilon(2 * math.sqrt(steps) / sigma, DELTA)  # closed form, no PLD at all
    assert exact <= ro * (1 + 1e-9) and ro == pytest.approx(exact, rel=0.01)
    assert ro == pytest.approx(reference_epsilon([DpSgdRelease(sigma, 1.0, steps)]), rel=0.01)


def test_replace_one_is_never_below_add_remove() -> None:
    for sigma in (0.7, 2.0):
        for q in (0.001, 0.03, 0.5, 1.0):
            ledger = [DpSgdRelease(sigma, q, 20, r) for r in range(1, 3)]
            assert epsilon(ledger, DELTA, neighbouring=RO) >= epsilon(ledger, DELTA), (sigma, q)


@pytest.mark.parametrize("add_remove", ["pld", "rdp"])
def test_the_group_privacy_cross_check_bounds_replace_one_from_above(add_remove: str) -> None:
    for ledger in LEDGERS.values():
        bound = replace_one_cross_check(ledger, DELTA, accountant=add_remove)
        ro = epsilon(ledger, DELTA, neighbouring=RO)
        assert ro <= bound
        if add_remove == "pld":  # tight add/remove: the group bound is about twice add/remove, not far above
            assert bound <= 2.5 * ro
        assert bound >= 2 * epsilon(ledger, DELTA, add_remove)  # 2 e at a smaller delta
    assert replace_one_cross_check([], DELTA) == 0.0


# --- calibration and budgets --------------------------------------------------------------------------
def test_calibration_under_replace_one_hits_its_target() -> None:
    q, steps, rounds, target = 0.02, 50, 3, 3.0
    sigma = calibrate_noise(target, DELTA, q, steps, rounds, tolerance=0.002, neighbouring=RO)
    ledger = [DpSgdRelease(sigma, q, steps, r) for r in range(1, rounds + 1)]
    assert epsilon(ledger, DELTA, neighbouring=RO) <= target
    assert reference_epsilon(ledger) == pytest.approx(target, rel=0.01)
    looser = [DpSgdRelease(sigma * 0.99, q, steps, r) for r in range(1, rounds + 1)]
    assert epsilon(looser, DELTA, neighbouring=RO) > target
    assert sigma > calibrate_noise(target, DELTA, q, steps, rounds)  # replace-one needs more noise
    assert calibrate_noise(target, DELTA, q, steps, rounds, neighbouring=AR) == calibrate_noise(
        target, DELTA, q, steps, rounds)


def test_check_budget_refuses_under_replace_one_what_add_remove_allows() -> None:
    ledger = LEDGERS["rounds"]
    nxt = DpSgdRelease(1.2, 0.05, 40, 6)
    ar_after = epsilon([*ledger, nxt], DELTA)
    ro_after = epsilon([*ledger, nxt], DELTA, neighbouring=RO)
    budget = (ar_after + ro_after) / 2
    assert check_budget(ledger, nxt, DELTA, budget).allowed
    verdict = check_budget(ledger, nxt, DELTA, budget, neighbouring=RO)
    assert not verdict.allowed and verdict.epsilon_after == ro_after and "replace-one" in verdict.reason


# --- refusals and errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rdp", "prv"])
def test_rdp_and_prv_refuse_replace_one_with_the_fix(name: str) -> None:
    ledger = LEDGERS["single"]
    nxt = DpSgdRelease(1.0, 0.01, 10, 2)
    calls = [
        lambda: epsilon(ledger, DELTA, name, neighbouring=RO),
        lambda: epsilon_per_release(ledger, DELTA, name, neighbouring=RO),
        lambda: delta_for_epsilon(ledger, 1.0, name, neighbouring=RO),
        lambda: calibrate_noise(3.0, DELTA, 0.02, 50, 3, name, neighbouring=RO),
        lambda: check_budget(ledger, nxt, DELTA, 10.0, name, neighbouring=RO),
        lambda: get_accountant(name, neighbouring=RO),
        lambda: ACCOUNTANT_REGISTRY[name](neighbouring=RO),
    ]
    for call in calls:
        with pytest.raises(UnsupportedRelationError) as info:
            call()
        msg = str(info.value)
        assert repr(name) in msg and "replace-one" in msg
        assert "use accountant=pld for replace-one" in msg and "use neighbouring=add-remove" in msg
        assert isinstance(info.value, ValueError) and info.value.accountant == name
        assert info.value.relation == RO and info.value.supported == ("add-remove",)


def test_epsilon_all_leaves_out_accountants_without_the_relation() -> None:
    ledger = LEDGERS["single"]
    values = epsilon_all(ledger, DELTA, neighbouring=RO)
    assert list(values) == ["pld"] and values["pld"] == epsilon(ledger, DELTA, neighbouring=RO)


def test_an_unknown_relation_is_one_clear_error() -> None:
    ledger = LEDGERS["single"]
    calls = [
        lambda: epsilon(ledger, DELTA, neighbouring="swap"),
        lambda: epsilon(ledger, DELTA, "rdp", neighbouring="replace_one"),
        lambda: epsilon([], DELTA, neighbouring="swap"),
        lambda: epsilon_per_release(ledger, DELTA, neighbouring="swap"),
        lambda: epsilon_all(ledger, DELTA, neighbouring="swap"),
        lambda: delta_for_epsilon(ledger, 1.0, neighbouring="swap"),
        lambda: calibrate_noise(3.0, DELTA, 0.02, 50, 3, neighbouring="swap"),
        lambda: check_budget(ledger, ledger[0], DELTA, 1.0, neighbouring="swap"),
        lambda: get_accountant("pld", neighbouring=None),  # type: ignore[arg-type]
        lambda: accountants_for("swap"),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="expected one of add-remove, replace-one") as info:
            call()
        assert not isinstance(info.value, UnsupportedRelationError)


def test_a_registered_accountant_declares_its_relations() -> None:
    class OnlyReplace(RdpAccountant):  # nonsense on purpose: declares replace-one only
        name = "only-replace"
        description = "test accountant"
        relations = ("replace-one",)

    register_accountant(OnlyReplace)
    try:
        with pytest.raises(UnsupportedRelationError, match="use accountant=pld for add-remove"):
            epsilon(LEDGERS["single"], DELTA, "only-replace")
        assert issubclass(OnlyReplace, Accountant)
    finally:
        del ACCOUNTANT_REGISTRY["only-replace"]


# --- caches ------------------------------------------------------------------------------------------
def _all_values(ledger: list, relation: str) -> tuple:
    return (epsilon(ledger, DELTA, neighbouring=relation),
            tuple(epsilon_per_release(ledger, DELTA, neighbouring=relation)),
            delta_for_epsilon(ledger, 2.0, neighbouring=relation),
            epsilon(ledger[:2], DELTA, neighbouring=relation))


def test_caches_never_mix_relations() -> None:
    ledger = LEDGERS["rounds"]
    clear_caches()
    ar_first = _all_values(ledger, AR)
    ro_second = _all_values(ledger, RO)
    assert all(a != b for a, b in zip(ar_first[:1] + ar_first[2:], ro_second[:1] + ro_second[2:], strict=True))
    assert all(a < b for a, b in zip(ar_first[1], ro_second[1], strict=True))
    clear_caches()
    ro_first = _all_values(ledger, RO)
    ar_second = _all_values(ledger, AR)
    assert ro_first == ro_second and ar_second == ar_first
    # the per-release table under replace-one equals fresh replace-one prefixes, like add-remove's
    clear_caches()
    fresh = tuple(epsilon(ledger[: n + 1], DELTA, neighbouring=RO) for n in range(len(ledger)))
    assert fresh == ro_first[1]
    # and the low-level PLD caches hold one entry per relation for the same runs
    runs = tuple(_pld.runs_of([(r.noise_multiplier, r.sample_rate, r.steps) for r in ledger]))
    assert _pld.ledger_pld(runs, RO) is not _pld.ledger_pld(runs, AR)
    assert _pld.ledger_pld(runs, RO) is _pld.ledger_pld(runs, RO)
