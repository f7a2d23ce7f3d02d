"""The released model is loadable without pickles (model.pt weights + model.json) and `dpfl predict` reproduces
the run's reported test accuracy, from the run's test set and from raw inputs the card's preprocessing turns into
the model's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _dpfl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("predict")
    proc = _dpfl("simulate", "--preset", "quick", "--num-server-rounds", "4", "--run-dir", str(where),
                 "--run-name", "r")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return where / "r"


def test_the_card_says_what_the_model_is_and_its_guarantee(run: Path) -> None:
    card = json.loads((run / "model.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert card["architecture"]["spec"] == "mlp" and card["input_shape"] == [1, 8, 8] and card["num_classes"] == 10
    assert card["guarantee"]["record_level"]["epsilon"] == summary["epsilon_max"] <= 3.0
    assert card["guarantee"]["privacy_unit"] == "record" and not card["guarantee"]["not_private"]
    assert card["test_accuracy"] == summary["final_accuracy"]
    # the README's three lines: no pickle, weights only
    from dpfl.models import build_model

    model = build_model(card["architecture"]["spec"], tuple(card["input_shape"]), card["num_classes"])
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))


def test_predict_reproduces_the_reported_test_accuracy(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred.csv"
    proc = _dpfl("predict", str(run), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    reported = json.loads((run / "summary.json").read_text())["final_accuracy"]
    assert f"accuracy {reported:.4f} (the run reported {reported:.4f})" in proc.stdout
    assert len(out.read_text().splitlines()) == 1 + 360


def test_raw_inputs_get_the_cards_preprocessing(run: Path, tmp_path: Path) -> None:
    """scikit-learn's raw digits (0-16) of the run's test split, through the card's preprocessing: the same
    accuracy as the run's own (already preprocessed) test set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from dpfl.simulations.data.datasets import DIGITS_SPLIT_SEED

    bunch = load_digits()
    _, x_te, _, y_te = train_test_split(bunch.data, bunch.target, test_size=0.2, stratify=bunch.target,
                                        random_state=DIGITS_SPLIT_SEED)
    raw = tmp_path / "raw.npz"
    np.savez(raw, x=x_te.astype(np.uint8), y=y_te)
    proc = _dpfl("predict", str(run), "--input", str(raw))
    assert proc.returncode == 0, proc.stderr
    reported = json.loads((run / "summary.json").read_text())["final_accuracy"]
    assert f"accuracy {reported:.4f}" in proc.stdout


def test_a_changed_or_missing_model_is_refused(run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "r"
    shutil.copytree(run, copy)
    (copy / "model.pt").write_bytes((copy / "model.pt").read_bytes() + b"x")
    proc = _dpfl("predict", str(copy))
    assert proc.returncode == 2 and "SHA-256 differs" in proc.stderr and "Traceback" not in proc.stderr
    (copy / "model.json").unlink()
    proc = _dpfl("predict", str(copy))
    assert proc.returncode == 2 and "model.json cannot be read" in proc.stderr
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((3, 7)))
    proc = _dpfl("predict", str(run), "--input", str(bad))
    assert proc.returncode == 2 and "not a whole number of inputs" in proc.stderr
