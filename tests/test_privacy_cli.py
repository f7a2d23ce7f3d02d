"""`dpfl privacy`: the calculator agrees with dp-accounting and rejects impossible inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dp_accounting
import pytest

ROOT = Path(__file__).resolve().parents[1]


def dpfl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_epsilon_all_json_agrees_with_dp_accounting() -> None:
    q, sigma, steps, delta = 0.013, 1.3, 700, 1e-6  # not used anywhere else in the tests
    proc = dpfl("privacy", "epsilon", "--sample-rate", str(q), "--noise-multiplier", str(sigma), "--steps",
                str(steps), "--delta", str(delta), "--accountant", "all", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {"epsilon", "delta", "accountant", "neighbouring", "sample_rate", "steps"}
    assert out["delta"] == delta and out["sample_rate"] == q and out["steps"] == steps
    assert out["neighbouring"] == "add-remove"
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4).compose(event).get_epsilon(delta)
    orders = list(range(2, 257))
    rdp_int = dp_accounting.rdp.RdpAccountant(orders).compose(event).get_epsilon(delta)
    assert out["accountant"]["pld"] == pytest.approx(pld, rel=0.01)
    assert out["accountant"]["rdp"] <= rdp_int + 1e-9  # fractional orders can only tighten
    assert out["accountant"]["rdp"] >= out["accountant"]["pld"]
    assert out["accountant"]["prv"] == pytest.approx(pld, rel=0.03)


def test_noise_round_trip() -> None:
    proc = dpfl("privacy", "noise", "--target-epsilon", "2", "--delta", "1e-5", "--sample-rate", "0.02",
                "--steps", "500", "--json")
    assert proc.returncode == 0, proc.stderr
    sigma = json.loads(proc.stdout)["noise_multiplier"]
    proc = dpfl("privacy", "epsilon", "--sample-rate", "0.02", "--noise-multiplier", str(sigma), "--steps", "500",
                "--delta", "1e-5", "--accountant", "pld", "--json")
    assert json.loads(proc.stdout)["epsilon"] <= 2.0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--sample-rate", "1.5", "--noise-multiplier", "1", "--steps", "10", "--delta", "1e-5"], "sample rate"),
        (["--sample-rate", "0", "--noise-multiplier", "1", "--steps", "10", "--delta", "1e-5"], "sample rate"),
        (["--sample-rate", "0.1", "--noise-multiplier", "0", "--steps", "10", "--delta", "1e-5"], "noise multiplier"),
        (["--sample-rate", "0.1", "--noise-multiplier", "1", "--steps", "0", "--delta", "1e-5"], "steps"),
        (["--sample-rate", "0.1", "--noise-multiplier", "1", "--steps", "10", "--delta", "1"], "delta"),
    ],
)
def test_impossible_inputs_are_rejected(args: list[str], needle: str) -> None:
    proc = dpfl("privacy", "epsilon", *args)
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_a_training_recipe_gives_the_same_epsilon_as_its_schedule() -> None:
    """--batch-size 64 --records 1000 --epochs 2 --rounds 5: q = 0.064 and 2 x ceil(1000/64) = 32 steps per round,
    160 in all, and dp-accounting's PLD for exactly that agrees."""
    recipe = ["--batch-size", "64", "--records", "1000", "--epochs", "2", "--rounds", "5"]
    proc = dpfl("privacy", "epsilon", *recipe, "--noise-multiplier", "1.1", "--delta", "1e-5", "--accountant",
                "pld", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["sample_rate"] == 0.064 and out["steps"] == 160
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.064, dp_accounting.GaussianDpEvent(1.1)), 160)
    pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4).compose(event).get_epsilon(1e-5)
    assert out["epsilon"] == pytest.approx(pld, rel=0.01)
    same = dpfl("privacy", "epsilon", "--sample-rate", "0.064", "--steps", "160", "--noise-multiplier", "1.1",
                "--delta", "1e-5", "--accountant", "pld", "--json")
    assert json.loads(same.stdout)["epsilon"] == out["epsilon"]
    sigma = dpfl("privacy", "noise", *recipe, "--target-epsilon", str(out["epsilon"]), "--delta", "1e-5", "--json")
    assert sigma.returncode == 0 and json.loads(sigma.stdout)["noise_multiplier"] == pytest.approx(1.1, rel=0.02)
    text = dpfl("privacy", "epsilon", *recipe, "--noise-multiplier", "1.1", "--delta", "1e-5")
    assert "q = 64/1000 = 0.064" in text.stdout and "x 5 rounds = 160 steps" in text.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--batch-size", "64", "--records", "1000"], "--rounds"),
        (["--batch-size", "64", "--rounds", "3"], "--records"),
        (["--batch-size", "64", "--records", "1000", "--rounds", "3", "--steps", "10"], "one way"),
        (["--batch-size", "0", "--records", "1000", "--rounds", "3"], "--batch-size 0"),
        ([], "the schedule is missing"),
    ],
)
def test_an_incomplete_or_mixed_schedule_is_refused(args: list[str], needle: str) -> None:
    proc = dpfl("privacy", "epsilon", *args, "--noise-multiplier", "1", "--delta", "1e-5")
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr


def test_a_user_level_schedule_is_one_sampled_gaussian_per_round() -> None:
    """The issue's figure: 1,000 clients, 100 expected per round, 100 rounds, user-level epsilon 3 at delta 1e-5
    needs sigma of about 1.68 (dp-accounting PLD), and the calculator's epsilon for it is dp-accounting's."""
    flags = ["--clients", "1000", "--expected-cohort", "100", "--rounds", "100", "--delta", "1e-5"]
    sigma = json.loads(dpfl("privacy", "noise", *flags, "--target-epsilon", "3", "--json").stdout)["noise_multiplier"]
    assert sigma == pytest.approx(1.68, abs=0.02)
    out = json.loads(dpfl("privacy", "epsilon", *flags, "--noise-multiplier", str(sigma), "--accountant", "pld",
                          "--json").stdout)
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(sigma)), 100)
    pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4).compose(event).get_epsilon(1e-5)
    assert out["epsilon"] == pytest.approx(pld, rel=0.01) and out["epsilon"] <= 3.0
    mixed = dpfl("privacy", "epsilon", *flags, "--batch-size", "4", "--noise-multiplier", "1")
    assert mixed.returncode == 2 and "user-level schedule" in mixed.stderr
