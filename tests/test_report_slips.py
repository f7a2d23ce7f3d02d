"""The report says what was used: σ/q/steps at a glance, the calibrated σ in the configuration table,
"target" vs "budget", one numbering, one ε line per group of equal clients, and the summary names the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dpfl.privacy.report.plots import identical_curves


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("slips")
    proc = subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", "simulate", "--dataset", "digits",
                           "--model", "mlp", "--num-clients", "3", "--num-server-rounds", "2", "--run-name", "r"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "runs" / "r", proc.stdout


def test_at_a_glance_and_configuration_show_the_sigma_used(run: tuple[Path, str]) -> None:
    path, _ = run
    report = json.loads((path / "report" / "report.json").read_text())
    sigma = report["reproduction"][0]["schedule"][0]["noise_multiplier"]
    md = (path / "report" / "report.md").read_text()
    assert f"**Release per client per round**: σ = {sigma:.4g}" in md
    assert f"**`noise-multiplier`**: {sigma:.6g} (calibrated to target-epsilon 3; the configured 1 was not used)" in md
    assert "**Target ε**: ε = 3 per client (from target-epsilon)" in md and "**Budget**" not in md


def test_html_sections_are_numbered_once(run: tuple[Path, str]) -> None:
    html = (run[0] / "report" / "report.html").read_text()
    assert "<nav><ul>" in html and "<nav><ol>" not in html


def test_equal_clients_are_one_curve_and_distinct_ones_are_not(run: tuple[Path, str]) -> None:
    eps = json.loads((run[0] / "report" / "report.json").read_text())["epsilon"]
    assert identical_curves(eps) == [eps["clients"]]
    eps = {**eps, "per_client": {**eps["per_client"], eps["clients"][1]: [0.5, 1.0]}}
    assert len(identical_curves(eps)) == 2


def test_terminal_summary_ends_with_the_report_path(run: tuple[Path, str]) -> None:
    path, out = run
    last = [line for line in out.splitlines() if line.strip()][-1]
    assert last.split()[0] == "report" and last.split()[-1] == str(path.resolve() / "report" / "report.html")
