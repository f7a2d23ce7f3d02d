"""What a newcomer meets first: the README's first command (`dpfl simulate --preset quick`) finishes with a real
epsilon and a report a browser shows in full, `dpfl --version`, and `--help` listing every allowed value."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from browser import CHROMIUM, SKIP_REASON, colourful_pixels, screenshot, visible_images
from independent_accounting import independent_pld_epsilon

ROOT = Path(__file__).resolve().parents[1]


def _dpfl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={"COLUMNS": "200", **__import__("os").environ})


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's first command, run where a user would run it (their working directory, default run-dir)."""
    where = tmp_path_factory.mktemp("first-contact")
    proc = _dpfl("simulate", "--preset", "quick", cwd=where)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = sorted((where / "runs").iterdir())
    assert len(runs) == 1
    return runs[0]


def test_the_readme_starts_with_the_quick_run() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)
    assert commands and "dpfl simulate --preset quick" in commands[0]
    assert len(readme.splitlines()) <= 220  # read top to bottom in five minutes; benchmarks: docs/benchmarks.md
    assert (ROOT / "docs" / "benchmarks.md").is_file()


def test_the_quick_run_is_private_named_and_reported(quick: Path) -> None:
    assert re.fullmatch(r"\d{8}-\d{6}-digits-mlp", quick.name)  # a name that says what ran
    summary = json.loads((quick / "summary.json").read_text())
    assert summary["rounds_completed"] == 10 and summary["final_accuracy"] > 0.8
    delta = summary["delta"]
    ledgers = sorted((quick / "ledgers").glob("client-*.jsonl"))
    assert len(ledgers) == 3
    for ledger in ledgers:
        rows = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
        assert rows[-1]["epsilon"] <= 3.0
        assert rows[-1]["epsilon"] == pytest.approx(independent_pld_epsilon(rows, delta), rel=2e-3)
    assert (quick / "report" / "report.html").is_file()


@pytest.mark.skipif(not CHROMIUM.exists(), reason=SKIP_REASON)
def test_a_browser_shows_every_item_of_the_report(quick: Path, tmp_path: Path) -> None:
    """Headless Chromium renders the quick run's report: every plot drawn, and the items a privacy officer reads
    (σ, q, steps and accountant at a glance, the calibrated σ marked, target not called budget, one numbering,
    the library versions) are on the page."""
    report = json.loads((quick / "report" / "report.json").read_text())
    html = (quick / "report" / "report.html").read_text()
    seen, total, dom = visible_images(html, tmp_path)
    assert (seen, total) == (3, 3) and set(report["plots"]) == {"epsilon", "accuracy", "accuracy_vs_epsilon"}
    sigma = report["reproduction"][0]["schedule"][0]["noise_multiplier"]
    text = re.sub(r"<[^>]+>", " ", dom)
    text = re.sub(r"\s+", " ", text)
    for item in (f"σ = {sigma:.4g}, q = ", " DP-SGD steps per round (pld accountant)",
                 f"{sigma:.6g} (calibrated to target-epsilon 3; the configured 1 was not used)", "Target ε",
                 f"dpfl {version('dpfl')}, PyTorch {version('torch')}, Opacus {version('opacus')}, "
                 f"Flower {version('flwr')}, dp-accounting {version('dp-accounting')}"):
        assert item in text, item
    assert "Budget" not in text and "<nav><ul>" in dom and text.count("1. Privacy mechanism") == 2  # nav + heading
    png = screenshot(html, tmp_path)
    in_plots = sum(colourful_pixels(p) for p in (quick / "report" / "plots").glob("*.png"))
    assert colourful_pixels(png) >= 0.7 * in_plots > 0


@pytest.mark.skipif(not CHROMIUM.exists(), reason=SKIP_REASON)
def test_the_browser_check_fails_when_a_plot_is_missing(quick: Path, tmp_path: Path) -> None:
    """The same check on the report rendered without its ε plot (what a failed plot leaves) sees it missing."""
    from dpfl.privacy.report.document import build_document
    from dpfl.privacy.report.render_html import render_html

    report = json.loads((quick / "report" / "report.json").read_text())
    plots = {name: (quick / "report" / rel).read_bytes() for name, rel in report["plots"].items()}
    title, sections = build_document(report)
    del plots["epsilon"]
    seen, total, _ = visible_images(render_html(title, sections, plots), tmp_path)
    assert (seen, total) == (2, 2)


def test_version_names_dpfl_and_the_libraries_behind_the_guarantee() -> None:
    out = _dpfl("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == (f"dpfl {version('dpfl')} (torch {version('torch')}, opacus {version('opacus')}, "
                                  f"flwr {version('flwr')}, dp-accounting {version('dp-accounting')})")


def test_help_lists_every_allowed_value() -> None:
    from dpfl.models.zoo import MODELS
    from dpfl.simulations.config.options import BUILT_IN_DATASETS, FILE_DATASETS, OPTIONS

    text = re.sub(r"\s+", " ", _dpfl("simulate", "--help").stdout)
    for option in OPTIONS:
        for choice in option.choices or ():
            assert choice in text, (option.key, choice)
    for name in (*BUILT_IN_DATASETS, *FILE_DATASETS, *MODELS):
        assert name in text, name
    assert "one of: pld, prv, rdp" in text and "one of: iid, dirichlet, shards, by-column, natural" in text
    presets = re.sub(r"\s+", " ", _dpfl("simulate", "--help").stdout)
    assert "quick: a first run in seconds" in presets
