"""Early stopping on a server-held validation split: rounds already run keep exactly the ledger entries they were
promised, unspent rounds are never charged, and the released model is the best one by validation accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpfl.server.early_stopping import validation_split

ROOT = Path(__file__).resolve().parents[1]
LEDGER_KEYS = ("round", "noise_multiplier", "sample_rate", "steps", "epsilon", "declared_records")


def _run(where: Path, name: str, *extra: str) -> Path:
    proc = subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", "simulate", "--preset", "quick",
                           "--num-server-rounds", "6", "--run-dir", str(where), "--run-name", name, *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return where / name


def _ledger(run: Path, client: str = "client-000") -> list[dict]:
    return [{k: json.loads(line)[k] for k in LEDGER_KEYS}
            for line in (run / "ledgers" / f"{client}.jsonl").read_text().splitlines()]


def test_the_validation_split_is_fixed_and_disjoint_from_the_test_set():
    val, test = validation_split(360, 0.5)
    again = validation_split(360, 0.5)
    assert torch.equal(val, again[0]) and torch.equal(test, again[1])
    assert set(val.tolist()).isdisjoint(test.tolist()) and len(val) + len(test) == 360 and len(val) == 180


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    where = tmp_path_factory.mktemp("early")
    frozen = ("--learning-rate", "1e-9")  # the model cannot improve: validation accuracy stalls after round 1
    return {"stopped": _run(where, "stopped", *frozen, "--early-stopping-patience", "2"),
            "full": _run(where, "full", *frozen)}


def test_stopping_early_keeps_every_promised_release_and_charges_no_unspent_round(runs):
    stopped, full = runs["stopped"], runs["full"]
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["rounds_completed"] == 3 and summary["stop_reason"].startswith("early stopping after round 3")
    for client in ("client-000", "client-001", "client-002"):
        early, whole = _ledger(stopped, client), _ledger(full, client)
        assert len(early) == 3 and len(whole) == 6  # rounds 4-6 were never charged
        assert early == whole[:3]  # the same sigma, q, steps and epsilon for every round that ran
    assert summary["epsilon_max"] < json.loads((full / "summary.json").read_text())["epsilon_max"]
    assert summary["early_stopping"]["best_round"] == 1 and summary["early_stopping"]["validation_records"] == 180


def test_the_released_model_is_the_best_by_validation_and_the_test_set_is_the_rest(runs):
    stopped = runs["stopped"]
    released = torch.load(stopped / "model.pt", weights_only=True)
    best = torch.load(stopped / "checkpoints" / "best.pt", weights_only=True)
    assert best["round"] == 1 and all(torch.equal(released[k], best["model"][k]) for k in released)
    rows = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert all("validation_accuracy" in r for r in rows)
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["final_accuracy"] == rows[0]["accuracy"]  # the best round's test accuracy
    assert summary["early_stopping"]["test_records"] == 180  # half of digits' 360 held-out records
    proc = subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", "predict", str(stopped)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and f"accuracy {summary['final_accuracy']:.4f} (the run reported" in proc.stdout, \
        proc.stdout + proc.stderr
