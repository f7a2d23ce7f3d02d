"""privacy.policy: the one place for delta, caps, budgets and "not private", read by every side."""

from __future__ import annotations

import pytest

from dpfl.privacy.policy import PolicyError, PrivacyPolicy, auto_delta, is_not_private
from dpfl.simulations.config import resolve


def test_auto_delta_is_one_over_ten_n_rounded_down_to_two_digits() -> None:
    assert auto_delta(60_000) == 1.6e-6  # 1 / 600,000 = 1.67e-6
    assert auto_delta(1_437) == 6.9e-5  # 1 / 14,370 = 6.96e-5
    for n in (7, 100, 1_437, 60_000, 123_457):
        assert auto_delta(n) <= 1 / (10 * n) < auto_delta(n) * 1.2


def test_a_configured_delta_wins_and_auto_needs_the_record_count() -> None:
    assert PrivacyPolicy.from_config(resolve({"delta": 1e-7}).values).delta(None) == 1e-7
    with pytest.raises(PolicyError, match="--delta"):
        PrivacyPolicy.from_config(resolve({}).values).delta(None)


@pytest.mark.parametrize(("dp", "deterministic", "expected"), [(True, False, False), (False, False, True),
                                                               (True, True, True), (False, True, True)])
def test_not_private_means_dp_off_or_seeded_noise(dp: bool, deterministic: bool, expected: bool) -> None:
    cfg = resolve({"dp": dp, "deterministic-noise": deterministic})
    assert is_not_private(dp, deterministic) is expected
    assert cfg.not_private is expected and cfg.policy.not_private is expected
    assert any("NOT PRIVATE" in line for line in cfg.policy.statement()) is expected


def test_cap_and_budget() -> None:
    policy = resolve({"num-server-rounds": 20, "max-participations": 5, "target-epsilon": 3.0,
                      "epsilon-budget": 2.0}).policy
    assert policy.participation_cap == 5 and policy.budget == 2.0
    assert resolve({"num-server-rounds": 20}).policy.participation_cap == 20
