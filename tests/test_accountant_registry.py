"""The accountant registry: every accountant is one registered class, and a new one is usable everywhere."""

from __future__ import annotations

import pytest

from dpfl.privacy import (
    ACCOUNTANT_REGISTRY,
    ACCOUNTANTS,
    DpSgdRelease,
    UnknownAccountantError,
    calibrate_noise,
    delta_for_epsilon,
    epsilon,
    epsilon_per_release,
    get_accountant,
)
from dpfl.privacy.accountants import Accountant, RdpAccountant, ledger_params, register_accountant
from dpfl.simulations.config import OPTION_BY_KEY

LEDGERS = [
    [DpSgdRelease(1.1, 0.02, 50, r) for r in range(1, 4)],
    [DpSgdRelease(0.9, 0.1, 10, 1), DpSgdRelease(1.5, 0.05, 20, 2)],
]


def test_the_registry_holds_the_three_accountants_and_the_config_offers_exactly_those() -> None:
    assert tuple(ACCOUNTANT_REGISTRY) == ACCOUNTANTS == ("pld", "prv", "rdp")
    assert OPTION_BY_KEY["accountant"].choices == ACCOUNTANTS
    for name, cls in ACCOUNTANT_REGISTRY.items():
        assert issubclass(cls, Accountant) and cls.name == name and cls.description


@pytest.mark.parametrize("ledger", LEDGERS)
@pytest.mark.parametrize("name", ["pld", "prv", "rdp"])
def test_each_accountant_through_the_registry_equals_the_public_function(name: str, ledger: list) -> None:
    acc = get_accountant(name)
    params = ledger_params(ledger)
    assert acc.epsilon(acc.cache_key(params), 1e-5) == epsilon(ledger, 1e-5, name)
    assert list(acc.epsilon_per_release(params, 1e-5)) == pytest.approx(epsilon_per_release(ledger, 1e-5, name),
                                                                         rel=1e-12)
    assert acc.delta(params, 2.0) == pytest.approx(delta_for_epsilon(ledger, 2.0, name), rel=1e-12)


def test_an_unknown_accountant_names_the_known_ones() -> None:
    with pytest.raises(UnknownAccountantError, match="pld, prv, rdp"):
        get_accountant("gdp")
    with pytest.raises(UnknownAccountantError):
        epsilon(LEDGERS[0], 1e-5, "gdp")


def test_a_registered_accountant_is_usable_by_epsilon_and_calibration() -> None:
    """A new class is enough: here a deliberately looser one (twice RDP's epsilon)."""

    class DoubleRdp(RdpAccountant):
        name = "double-rdp"
        description = "twice RDP (a test accountant)"

        def epsilon(self, key: tuple, delta: float) -> float:
            return 2 * super().epsilon(key, delta)

    register_accountant(DoubleRdp)
    try:
        assert epsilon(LEDGERS[0], 1e-5, "double-rdp") == pytest.approx(2 * epsilon(LEDGERS[0], 1e-5, "rdp"))
        sigma = calibrate_noise(3.0, 1e-5, 0.02, 50, 3, accountant="double-rdp")
        assert sigma > calibrate_noise(3.0, 1e-5, 0.02, 50, 3, accountant="rdp")
        assert epsilon([DpSgdRelease(sigma, 0.02, 50, r) for r in range(1, 4)], 1e-5, "double-rdp") <= 3.0
        with pytest.raises(ValueError, match="already registered"):  # its cached epsilons would be served
            register_accountant(type("Other", (DoubleRdp,), {}))
    finally:
        del ACCOUNTANT_REGISTRY["double-rdp"]
