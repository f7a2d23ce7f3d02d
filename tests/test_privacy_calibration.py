"""Noise calibration hits the target for the whole schedule; a round's schedule has one definition."""

from __future__ import annotations

import math
import time

import pytest

from dpfl.privacy import DpSgdRelease, UnknownAccountantError, calibrate_noise, epsilon, steps_per_round

DELTA = 1e-5


def schedule_epsilon(sigma: float, q: float, steps: int, rounds: int, accountant: str) -> float:
    return epsilon([DpSgdRelease(sigma, q, steps, r) for r in range(1, rounds + 1)], DELTA, accountant)


@pytest.mark.parametrize(("accountant", "target", "q", "steps", "rounds"), [
    ("pld", 2.0, 64 / 5400, 94, 10),
    ("rdp", 2.0, 64 / 5400, 94, 10),
    ("prv", 3.0, 0.05, 20, 5),
    ("pld", 8.0, 1.0, 1, 20),
])
def test_calibration_round_trip(accountant: str, target: float, q: float, steps: int, rounds: int) -> None:
    start = time.perf_counter()
    sigma = calibrate_noise(target, DELTA, q, steps, rounds, accountant)
    assert time.perf_counter() - start < 30
    assert schedule_epsilon(sigma, q, steps, rounds, accountant) <= target
    assert schedule_epsilon(sigma * 0.98, q, steps, rounds, accountant) > target  # and not much more noise


def test_calibration_is_fast_and_cached() -> None:
    calibrate_noise.cache_clear()
    start = time.perf_counter()
    sigma = calibrate_noise(3.0, DELTA, 0.0118, 94, 10)
    assert time.perf_counter() - start < 10  # a few seconds at most
    hits = calibrate_noise.cache_info().hits
    assert calibrate_noise(3.0, DELTA, 0.0118, 94, 10) == sigma
    assert calibrate_noise.cache_info().hits == hits + 1


def test_tight_accountants_need_less_noise_than_rdp() -> None:
    rdp = calibrate_noise(2.0, DELTA, 0.0118, 94, 10, "rdp")
    pld = calibrate_noise(2.0, DELTA, 0.0118, 94, 10, "pld")
    assert 0.8 * rdp < pld < rdp


def test_unreachable_and_invalid_targets() -> None:
    with pytest.raises(ValueError, match="out of reach"):
        calibrate_noise(1e-4, DELTA, 1.0, 1000, 100)  # would need sigma far above 1e4
    for args, needle in [((0.0, DELTA, 0.1, 10, 1), "target epsilon"),
                         ((math.inf, DELTA, 0.1, 10, 1), "target"),
                         ((1.0, 0.0, 0.1, 10, 1), "delta"), ((1.0, 1.0, 0.1, 10, 1), "delta"),
                         ((1.0, DELTA, 0.0, 10, 1), "sample rate"), ((1.0, DELTA, 1.5, 10, 1), "sample rate"),
                         ((1.0, DELTA, 0.1, 0, 1), "steps"), ((1.0, DELTA, 0.1, 10, 0), "rounds")]:
        with pytest.raises(ValueError, match=needle):
            calibrate_noise(*args)
    with pytest.raises(ValueError, match="tolerance"):
        calibrate_noise(1.0, DELTA, 0.1, 10, 1, tolerance=0.0)
    with pytest.raises(UnknownAccountantError, match="pld, prv, rdp"):
        calibrate_noise(1.0, DELTA, 0.1, 10, 1, accountant="gdp")


def test_a_very_loose_target_gets_the_smallest_noise_considered() -> None:
    assert calibrate_noise(1e4, DELTA, 0.01, 10, 1) == 0.1


def test_steps_per_round_is_the_one_definition() -> None:
    assert steps_per_round(60_000, 64, 1) == (64 / 60_000, 938)
    assert steps_per_round(6_000, 64, 3) == (64 / 6_000, 3 * 94)
    assert steps_per_round(64, 64, 1) == (1.0, 1)
    assert steps_per_round(10, 64, 2) == (1.0, 2)  # tiny client: every record in every step
    for args, needle in [((0, 64, 1), "declared records"), ((100, 0, 1), "batch size"),
                         ((100, 64, 0), "local epochs"), ((100.5, 64, 1), "declared records")]:
        with pytest.raises(ValueError, match=needle):
            steps_per_round(*args)  # type: ignore[arg-type]
