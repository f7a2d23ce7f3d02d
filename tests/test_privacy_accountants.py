"""Accountants agree with independent references (dp-accounting, Opacus, the analytic Gaussian),
and are sound."""

from __future__ import annotations

import json
import logging
import math
import warnings

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis import rdp as opacus_rdp
from scipy import optimize, stats

from dpfl.privacy import (
    ACCOUNTANTS,
    DEFAULT_ACCOUNTANT,
    DpSgdRelease,
    GaussianRelease,
    UnknownAccountantError,
    _pld,
    _rdp,
    clear_caches,
    delta_for_epsilon,
    epsilon,
    epsilon_all,
    epsilon_per_release,
    release_from_dict,
    validate_release_params,
)

DELTA = 1e-5


def exact_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Balle & Wang 2018: delta(eps) = Phi(-eps sigma + 1/(2 sigma)) - e^eps Phi(-eps sigma - 1/(2 sigma))."""

    def gap(eps: float) -> float:
        return (stats.norm.cdf(-eps * sigma + 1 / (2 * sigma))
                - math.exp(eps) * stats.norm.cdf(-eps * sigma - 1 / (2 * sigma)) - delta)

    return optimize.brentq(gap, 0.0, 500.0, xtol=1e-14, rtol=1e-14)


def sgd_event(sigma: float, q: float, steps: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)


MIXED = [DpSgdRelease(1.0, 0.02, 50, 1), DpSgdRelease(1.0, 0.02, 50, 2), DpSgdRelease(1.2, 0.05, 20, 3),
         DpSgdRelease(1.0, 1.0, 1, 4), GaussianRelease(2.0, 0.3, 1, 5), DpSgdRelease(1.0, 0.02, 50, 6)]


# --- releases ------------------------------------------------------------------------------------------
def test_release_round_trips_through_json_and_describes_itself_as_a_dp_event() -> None:
    for release in (DpSgdRelease(1.1, 0.01, 94, 3), GaussianRelease(0.8, 0.2, 1, 7)):
        d = json.loads(json.dumps(release.to_dict()))
        assert release_from_dict(d) == release == type(release).from_dict(d)
        assert set(d) == {"round", "mechanism", "noise_multiplier", "sample_rate", "steps"}
    event = DpSgdRelease(1.1, 0.01, 94).to_dp_event()
    assert event == sgd_event(1.1, 0.01, 94)
    assert not isinstance(GaussianRelease(1.0, 1.0), DpSgdRelease)
    entry = {**GaussianRelease(1.0, 1.0).to_dict(), "epsilon": 3.0}  # a ledger entry has more keys
    assert release_from_dict(entry) == GaussianRelease(1.0, 1.0)


@pytest.mark.parametrize(("args", "needle"), [
    ((0.0, 0.1, 10), "noise multiplier"), ((-1.0, 0.1, 10), "noise multiplier"),
    ((math.inf, 0.1, 10), "noise multiplier"), ((math.nan, 0.1, 10), "noise multiplier"),
    ((1.0, 0.0, 10), "sample rate"), ((1.0, 1.5, 10), "sample rate"), ((1.0, math.nan, 10), "sample rate"),
    ((1.0, 0.1, 0), "steps"), ((1.0, 0.1, 2.5), "steps"),
])
def test_invalid_release_parameters_are_named(args: tuple, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        validate_release_params(*args)
    with pytest.raises(ValueError, match=needle):
        DpSgdRelease(*args)


def test_mechanism_must_match_the_class_and_be_known() -> None:
    with pytest.raises(ValueError, match="mechanism"):
        DpSgdRelease(1.0, 0.1, 1, mechanism="gaussian")
    with pytest.raises(ValueError, match="laplace"):
        release_from_dict({"mechanism": "laplace", "noise_multiplier": 1, "sample_rate": 1, "steps": 1})
    with pytest.raises(ValueError, match="missing"):
        release_from_dict({"mechanism": "dp-sgd", "noise_multiplier": 1.0})


# --- input validation ---------------------------------------------------------------------------------
def test_empty_ledger_is_zero_and_bad_inputs_are_refused() -> None:
    for name in ACCOUNTANTS:
        assert epsilon([], DELTA, name) == 0.0
        assert epsilon_per_release([], DELTA, name) == []
        assert delta_for_epsilon([], 1.0, name) == 0.0
    release = [DpSgdRelease(1.0, 0.1, 10)]
    for bad in (0.0, 1.0, -1e-5, 2.0, math.nan):
        with pytest.raises(ValueError, match="delta"):
            epsilon(release, bad)
    with pytest.raises(UnknownAccountantError, match="pld, prv, rdp"):
        epsilon(release, DELTA, "gdp")
    assert issubclass(UnknownAccountantError, ValueError)
    with pytest.raises(ValueError, match="epsilon"):
        delta_for_epsilon(release, -1.0)
    with pytest.raises(TypeError, match="release_from_dict"):
        epsilon([release[0].to_dict()], DELTA)  # type: ignore[list-item]
    assert DEFAULT_ACCOUNTANT == "pld" and ACCOUNTANTS == ("pld", "prv", "rdp")


# --- RDP: the vectorised port equals both libraries ------------------------------------------------------
@pytest.mark.parametrize(("sigma", "q"), [(1.0, 0.01), (0.6, 0.5), (4.0, 0.003), (1.3, 0.999)])
def test_rdp_port_equals_opacus_and_dp_accounting_order_by_order(sigma: float, q: float) -> None:
    orders = [float(a) for a in _rdp.ORDERS]
    assert set(range(2, 257)) <= {int(a) for a in orders if a.is_integer()}
    op, dp = _rdp.rdp_one_step(sigma, q)
    logging.disable(logging.WARNING)  # dp-accounting logs orders its series gives up on
    try:
        ref_op = np.asarray(opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=orders))
        ref_dp = rdp_privacy_accountant._compute_rdp_poisson_subsampled_gaussian(q, sigma, orders)
    finally:
        logging.disable(logging.NOTSET)
    np.testing.assert_allclose(op, ref_op, rtol=1e-6, atol=1e-12)
    assert np.array_equal(np.isinf(dp), np.isinf(ref_dp))  # dp-accounting's non-converged orders
    finite = np.isfinite(ref_dp)
    np.testing.assert_allclose(dp[finite], ref_dp[finite], rtol=1e-9, atol=1e-12)
    integer = np.array([a.is_integer() for a in orders])
    np.testing.assert_allclose(op[integer], dp[integer], rtol=1e-12)  # the libraries agree at integer orders
    for total in (op * 300, ref_op * 300):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = opacus_rdp.get_privacy_spent(orders=orders, rdp=total, delta=DELTA)[0]
        assert _rdp.epsilon_opacus(total, DELTA) == pytest.approx(want, rel=1e-9)
    want_dp = dp_accounting.rdp.compute_epsilon(orders, list(dp * 300), DELTA)[0]
    assert _rdp.epsilon_dpacc(dp * 300, DELTA) == pytest.approx(want_dp, rel=1e-12)


def test_rdp_reports_the_larger_of_the_two_libraries() -> None:
    orders = [float(a) for a in _rdp.ORDERS]
    ledger = [DpSgdRelease(1.1, 0.02, 200), DpSgdRelease(0.9, 0.05, 30)]
    total = sum(np.asarray(opacus_rdp.compute_rdp(q=r.sample_rate, noise_multiplier=r.noise_multiplier,
                                                  steps=r.steps, orders=orders)) for r in ledger)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps_opacus = opacus_rdp.get_privacy_spent(orders=orders, rdp=total, delta=DELTA)[0]
    eps_dpacc = dp_accounting.rdp.RdpAccountant(orders).compose(
        dp_accounting.ComposedDpEvent([r.to_dp_event() for r in ledger])).get_epsilon(DELTA)
    assert epsilon(ledger, DELTA, "rdp") == pytest.approx(max(eps_opacus, eps_dpacc), rel=1e-9)
    integer_only = dp_accounting.rdp.RdpAccountant(list(range(2, 257))).compose(
        dp_accounting.ComposedDpEvent([r.to_dp_event() for r in ledger])).get_epsilon(DELTA)
    assert epsilon(ledger, DELTA, "rdp") <= integer_only + 1e-9  # more orders can only tighten


# --- PLD and PRV against the libraries ------------------------------------------------------------------
def test_pld_agrees_with_dp_accounting_pld_accountant() -> None:
    for ledger in ([DpSgdRelease(1.3, 0.013, 700)], MIXED):
        event = dp_accounting.ComposedDpEvent([r.to_dp_event() for r in ledger])
        ref = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4).compose(event)
        ref = ref.get_epsilon(DELTA)
        assert epsilon(ledger, DELTA, "pld") == pytest.approx(ref, rel=0.005)


def test_pld_matches_dp_accounting_exactly_at_the_interval_it_chose() -> None:
    ledger = [DpSgdRelease(1.0, 0.05, 40, r) for r in range(1, 6)]
    h = _pld.interval_for(_pld.runs_of([(1.0, 0.05, 40)] * 5))
    ref = dp_accounting.pld.PLDAccountant(value_discretization_interval=h).compose(
        sgd_event(1.0, 0.05, 200)).get_epsilon(DELTA)
    assert epsilon(ledger, DELTA, "pld") == pytest.approx(ref, rel=1e-9)


def test_prv_is_what_opacus_prv_accountant_gives_for_the_ledger() -> None:
    ledger = [DpSgdRelease(1.0, 0.02, 100, r) for r in range(1, 4)] + [DpSgdRelease(0.8, 0.05, 10, 4),
                                                                        GaussianRelease(2.0, 1.0, 1, 5)]
    prv = PRVAccountant()
    prv.history = [(1.0, 0.02, 300), (0.8, 0.05, 10), (2.0, 1.0, 1)]
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = prv.get_epsilon(delta=DELTA, eps_error=0.01)  # epsilon > 2 here: dpfl uses Opacus' default
    assert epsilon(ledger, DELTA, "prv") == pytest.approx(ref, rel=1e-6)


# --- soundness and tightness against exact values ---------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.8, 1.0, 2.0])
def test_exact_gaussian_mechanism(sigma: float) -> None:
    exact = exact_gaussian_epsilon(sigma, DELTA)
    for release in (GaussianRelease(sigma, 1.0, 1), DpSgdRelease(sigma, 1.0, 1)):
        values = epsilon_all([release], DELTA)
        assert values["pld"] == pytest.approx(exact, rel=0.01) and values["pld"] >= exact - 1e-12
        assert values["prv"] == pytest.approx(exact, rel=0.01) and values["prv"] >= exact
        assert values["rdp"] >= exact


@pytest.mark.parametrize(("sigma", "steps"), [(2.0, 4), (6.0, 16), (10.0, 100)])
def test_every_accountant_is_sound_for_composed_gaussians(sigma: float, steps: int) -> None:
    """q = 1: `steps` Gaussian steps are exactly one Gaussian with sigma / sqrt(steps)."""
    exact = exact_gaussian_epsilon(sigma / math.sqrt(steps), DELTA)
    ledger = [GaussianRelease(sigma, 1.0, 1, r) for r in range(steps)]
    for name, value in epsilon_all(ledger, DELTA).items():
        assert value >= exact - 1e-12, name
        assert value <= exact * 1.12, name  # and not absurdly loose (RDP is ~8-11 % above)


def test_abadi_et_al_2016_example() -> None:
    """q 0.01, sigma 4, 10,000 steps, delta 1e-5: RDP ~ 1.04, PLD ~ 0.95 (and PRV close to PLD)."""
    values = epsilon_all([DpSgdRelease(4.0, 0.01, 100, r) for r in range(100)], DELTA)
    assert values["rdp"] == pytest.approx(1.04, abs=0.01)
    assert values["pld"] == pytest.approx(0.95, abs=0.01)
    assert values["pld"] <= values["prv"] <= values["pld"] + 0.015
    assert values["pld"] < values["rdp"]


def test_more_releases_never_lower_epsilon() -> None:
    for name in ("pld", "rdp"):
        values = epsilon_per_release(MIXED, DELTA, name)
        assert all(b >= a for a, b in zip(values, values[1:], strict=False))


# --- incremental = fresh; caching --------------------------------------------------------------------------
def test_per_release_epsilon_equals_fresh_computation_of_every_prefix() -> None:
    ledger = [*MIXED, DpSgdRelease(0.9, 0.001, 300, 7)]
    for name in ("rdp", "pld"):
        clear_caches()
        per_release = epsilon_per_release(ledger, DELTA, name)
        clear_caches()
        fresh = [epsilon(ledger[: n + 1], DELTA, name) for n in range(len(ledger))]
        assert per_release == fresh, name
    clear_caches()
    per_release = epsilon_per_release(MIXED[:4], DELTA, "prv")
    fresh = [epsilon(MIXED[: n + 1], DELTA, "prv") for n in range(4)]
    assert per_release == pytest.approx(fresh, abs=0.02)  # one shared discretisation: within 2 x eps_error
    assert per_release[-1] == pytest.approx(fresh[-1], rel=1e-6)


def test_identical_ledgers_are_computed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []
    real = _pld.epsilon

    def counting(runs: tuple, delta: float) -> float:
        calls.append(runs)
        return real(runs, delta)

    monkeypatch.setattr(_pld, "epsilon", counting)
    clear_caches()
    # ten IID clients: same parameters, their own objects and rounds
    ledgers = [[DpSgdRelease(1.0, 0.0118, 94, r) for r in range(1, 11)] for _ in range(10)]
    values = {epsilon(ledger, DELTA) for ledger in ledgers}
    assert len(values) == 1 and len(calls) == 1
    # a client that skipped rounds composes the same releases: same number, no new computation
    assert epsilon([DpSgdRelease(1.0, 0.0118, 94, r) for r in range(5, 25, 2)], DELTA) in values
    assert len(calls) == 1
    per_release = epsilon_per_release(ledgers[0], DELTA)
    assert [epsilon(ledgers[0][: n + 1], DELTA) for n in range(10)] == per_release
    assert len(calls) == 1 + 10  # the table composed once per release; the prefixes then came from cache


def test_one_pld_interval_for_a_ledger_keeps_composition_consistent() -> None:
    h = _pld.interval_for([(1.0, 0.01, 100), (1.0, 1.0, 3)])
    assert 2.0**_pld.H_MIN_LOG2 <= h <= 2.0**_pld.H_MAX_LOG2 and math.log2(h).is_integer()
    # finer for a small-q ledger than for a large-q one
    assert _pld.interval_for([(1.0, 0.001, 1000)]) < _pld.interval_for([(1.0, 0.3, 10)])


# --- delta(epsilon) ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pld", "rdp"])
def test_delta_for_epsilon_inverts_epsilon(name: str) -> None:
    ledger = [DpSgdRelease(1.1, 0.02, 100, r) for r in range(5)]
    eps = epsilon(ledger, DELTA, name)
    d = delta_for_epsilon(ledger, eps, name)
    assert d == pytest.approx(DELTA, rel=0.05)
    assert delta_for_epsilon(ledger, eps * 1.2, name) < d < delta_for_epsilon(ledger, eps * 0.8, name)


def test_prv_delta_for_epsilon_is_a_valid_upper_end() -> None:
    ledger = [GaussianRelease(2.0, 1.0, 1)]
    d = delta_for_epsilon(ledger, 2.5, "prv")
    assert epsilon(ledger, d, "prv") <= 2.5 < epsilon(ledger, d / 1.1, "prv")
    assert d >= delta_for_epsilon(ledger, 2.5, "pld") * 0.99

