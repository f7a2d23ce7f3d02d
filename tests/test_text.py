"""Text: the hashing tokenizer fits nothing on anyone's text, the fortunes corpus loads offline with a natural
split by author, the DP LSTM's clipped gradients equal a per-example loop, and its preset runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_dp_exactness import (
    OPACUS_NORM_EPS,
    TOL,
    N,
    _norm,
    _per_sample_grads,
    _reference_change,
    _train_locally_change,
)

from dpfl.models import build_model
from dpfl.models.text import VOCABULARY_SIZE
from dpfl.simulations.data.clients import load_client_data
from dpfl.simulations.data.datasets import FORTUNES_DIR, DataError, load_dataset
from dpfl.simulations.data.text import FORTUNE_TOPICS, SEQUENCE_LENGTH, encode, owner_key, token_id

ROOT = Path(__file__).resolve().parents[1]
needs_corpus = pytest.mark.skipif(not (FORTUNES_DIR / "computers").exists(),
                                  reason="Debian's fortunes package is not installed (bash setup.sh installs it)")


def test_the_tokenizer_is_a_fixed_public_function():
    ids = encode("Hello, World! hello")
    assert ids[:3] == [token_id("hello"), token_id("world"), token_id("hello")] and ids[3:] == [0] * 45
    assert len(ids) == SEQUENCE_LENGTH and all(0 <= i < VOCABULARY_SIZE for i in ids)
    # the same ids in another process: nothing depends on a seed, a session or the data
    out = subprocess.run([sys.executable, "-c", "from dpfl.simulations.data.text import encode; "
                          "print(encode('Hello, World! hello')[:3])"], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == str(ids[:3])
    assert len(encode("word " * 100)) == SEQUENCE_LENGTH  # truncated


def test_owner_is_the_author_when_attributed():
    a = "Some wit.\n\t\t-- Oscar Wilde"
    b = "Another wit, entirely different.\n  -- Oscar Wilde, in a letter"
    assert owner_key(a) == owner_key(b) != owner_key("An anonymous line")


@needs_corpus
def test_the_corpus_loads_offline_with_a_natural_split_by_author():
    ds = load_dataset("fortunes")
    assert ds.train_x.dtype == torch.int64 and ds.train_x.shape[1:] == (SEQUENCE_LENGTH,)
    assert ds.num_classes == len(FORTUNE_TOPICS) and int(ds.train_y.max()) == len(FORTUNE_TOPICS) - 1
    assert 4000 < ds.train_x.shape[0] + ds.test_x.shape[0] < 8000
    cfg = {"dataset": "fortunes", "num-clients": 6, "partition": "natural", "seed": 42, "validation-fraction": 0.0,
           "data-path": "", "data-dir": ""}
    sizes = [int(load_client_data(cfg, k).train_y.shape[0]) for k in range(6)]
    assert sum(sizes) == ds.train_x.shape[0] and min(sizes) > 300
    # every owner's records at exactly one client
    homes = {}
    for k in range(6):
        idx = np.flatnonzero(ds.owners % np.uint64(6) == k)
        for owner in set(ds.owners[idx].tolist()):
            assert homes.setdefault(owner, k) == k


def test_a_missing_corpus_is_one_clear_error(tmp_path: Path):
    with pytest.raises(DataError, match="apt-get install -y fortunes"):
        load_dataset("fortunes", str(tmp_path))


def test_the_dp_lstm_clips_exactly_like_a_per_example_loop():
    torch.manual_seed(0)
    model = build_model("lstm", (12,), 4).to(torch.float64)
    x = torch.randint(1, VOCABULARY_SIZE, (N, 12))
    x[::3, 8:] = 0  # padded sequences too
    y = torch.randint(0, 4, (N,))
    norms = sorted(_norm(g) for g in _per_sample_grads(model, x, y))
    clip = (norms[N // 2 - 1] + norms[N // 2]) / 2
    ref = _reference_change(model, x, y, clip, OPACUS_NORM_EPS)
    got = _train_locally_change(model, x, y, clip, "hooks")
    assert float(ref.norm()) > 0 and float((got - ref).norm() / ref.norm()) <= TOL


@needs_corpus
def test_the_text_preset_runs_with_dp(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", "simulate", "--preset", "fortunes-lstm",
                           "--num-server-rounds", "2", "--run-dir", str(tmp_path), "--run-name", "t"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["model"] == "lstm" and config["partition"] == "natural" and config["grad-sample-mode"] == "auto"
    assert summary["rounds_completed"] == 2 and 0 < summary["epsilon_max"] <= config["target-epsilon"]
    assert summary["final_accuracy"] > 1 / len(FORTUNE_TOPICS) * 0.8
    card = json.loads((tmp_path / "t" / "model.json").read_text())
    assert card["preprocessing"]["tokenizer"] == "hashing" and card["preprocessing"]["sequence_length"] == 48
    quotes = tmp_path / "quotes.txt"
    quotes.write_text("A computer program does what you tell it to do.\nThe senate voted on the bill today.\n")
    proc = subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", "predict", str(tmp_path / "t"),
                           "--input", str(quotes), "--out", str(tmp_path / "p.csv")], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and "2 inputs predicted" in proc.stdout, proc.stdout + proc.stderr
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 3
