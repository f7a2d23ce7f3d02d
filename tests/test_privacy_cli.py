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
    assert set(out) == {"epsilon", "delta", "accountant", "neighbouring"} and out["delta"] == delta
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
