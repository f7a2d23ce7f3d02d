"""``dpfl runs list`` and ``dpfl runs compare`` on real run directories (two short simulations)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FLAGS = ["--dataset", "digits", "--model", "mlp", "--num-clients", "2", "--num-server-rounds", "2",
         "--batch-size", "64", "--noise-multiplier", "1.0", "--target-epsilon", "0", "--seed", "3"]


def _dpfl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", *args], capture_output=True, text=True,
                          timeout=300, env={"COLUMNS": "250", **__import__("os").environ})


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for name, sigma, tags in (("low-noise", "0.8", "baseline,sigma-0.8"), ("high-noise", "2.0", "")):
        out = _dpfl("simulate", *FLAGS, "--noise-multiplier", sigma, "--run-dir", str(root), "--run-name", name,
                    "--tag", tags)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (root / "not-a-run").mkdir()
    return root


def test_runs_list_shows_every_run_with_its_epsilon_and_state(two_runs: Path) -> None:
    out = _dpfl("runs", "list", str(two_runs))
    assert out.returncode == 0, out.stderr
    for name in ("low-noise", "high-noise"):
        summary = json.loads((two_runs / name / "summary.json").read_text())
        assert name in out.stdout and f"{summary['epsilon_max']:.3f}" in out.stdout
    assert out.stdout.count("complete") == 2 and "not-a-run" not in out.stdout
    assert "record" in out.stdout  # the unit of privacy
    missing = _dpfl("runs", "list", str(two_runs / "nowhere"))
    assert missing.returncode == 2 and "not a directory" in missing.stdout + missing.stderr


def test_runs_compare_renders_a_table_and_a_figure(two_runs: Path, tmp_path: Path) -> None:
    figure = tmp_path / "cmp.png"
    out = _dpfl("runs", "compare", str(two_runs / "low-noise"), str(two_runs / "high-noise"), "--out", str(figure))
    assert out.returncode == 0, out.stderr
    assert figure.stat().st_size > 10_000 and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "low-noise" in out.stdout and "high-noise" in out.stdout
    one = _dpfl("runs", "compare", str(two_runs / "low-noise"))
    assert one.returncode == 2 and "at least two" in one.stdout + one.stderr
    bad = _dpfl("runs", "compare", str(two_runs / "low-noise"), str(two_runs / "not-a-run"))
    assert bad.returncode == 2 and "no dpfl run" in bad.stdout + bad.stderr


def test_runs_list_filters_by_tag(two_runs: Path) -> None:
    tagged = _dpfl("runs", "list", str(two_runs), "--tag", "baseline")
    assert tagged.returncode == 0, tagged.stderr
    assert "low-noise" in tagged.stdout and "high-noise" not in tagged.stdout
    assert "baseline, sigma-0.8" in tagged.stdout  # the tags column
    none = _dpfl("runs", "list", str(two_runs), "--tag", "nothing-has-it")
    assert none.returncode == 0 and "tagged 'nothing-has-it'" in none.stdout


@pytest.mark.parametrize(("flag", "value"), [("--run-name", "../escaped"), ("--run-name", "a/b"),
                                             ("--run-name", "..hidden"), ("--tag", "good,bad/tag")])
def test_a_run_name_or_tag_that_leaves_the_run_directory_is_refused(flag: str, value: str, tmp_path: Path) -> None:
    out = _dpfl("simulate", *FLAGS, "--run-dir", str(tmp_path / "runs"), flag, value)
    assert out.returncode == 2, out.stdout[-1000:]
    assert f"{flag[2:]}={value!r} is not valid" in out.stdout + out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "runs").exists() and not (tmp_path / "escaped").exists()
