"""Weight decay and dropout as run-config keys: free under DP (the ledger's release is unchanged), honest replies
still pass the server's update bound, dropout leaves the weights and eval mode alone."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpfl.client.training import TrainSettings, train_locally
from dpfl.models import build_model
from dpfl.models.regularisation import DropoutError, add_dropout

ROOT = Path(__file__).resolve().parents[1]


def test_dropout_keeps_the_weights_and_eval_mode_and_masks_in_training():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    assert add_dropout(model, 0.5) == 1
    assert model.state_dict().keys() == plain.keys()
    x = torch.randn(16, 1, 8, 8)
    model.eval()
    reference = build_model("mlp", (1, 8, 8), 10)
    reference.load_state_dict(plain)
    reference.eval()
    assert torch.equal(model(x), reference(x))  # eval: no dropout
    model.train()
    assert not torch.equal(model(x), model(x))  # training: random masks


def test_dropout_needs_an_activation():
    with pytest.raises(DropoutError, match="no activation module"):
        add_dropout(build_model("logreg", (1, 8, 8), 10), 0.2)


def test_weight_decay_is_applied_and_the_release_is_unchanged():
    torch.manual_seed(1)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    base = TrainSettings(local_epochs=1, batch_size=16, learning_rate=0.5, momentum=0.0, optimizer="sgd", dp=True,
                         noise_multiplier=0.0, max_grad_norm=1.0, grad_sample_mode="bk")
    outcomes, weights = [], []
    for wd in (0.0, 0.1):
        torch.manual_seed(2)
        model = build_model("mlp", (1, 8, 8), 10)
        out = train_locally(model, x, y, dataclasses.replace(base, weight_decay=wd),
                            sampling_generator=torch.Generator().manual_seed(3),
                            noise_generator=torch.Generator().manual_seed(4), device=torch.device("cpu"))
        outcomes.append((out.sample_rate, out.steps))
        weights.append(model[1].weight.detach().norm().item())
    assert outcomes[0] == outcomes[1]  # same q and steps: the ledger's release is the same
    assert weights[1] < weights[0]  # the decay shrank the weights


def test_a_run_with_weight_decay_and_dropout_is_accepted_and_charged_as_without(tmp_path: Path):
    common = ["simulate", "--preset", "quick", "--num-server-rounds", "2", "--run-dir", str(tmp_path)]
    runs = {"plain": [], "regularised": ["--weight-decay", "0.5", "--dropout", "0.2"]}
    ledgers = {}
    for name, extra in runs.items():
        proc = subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", *common, "--run-name", name, *extra],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["rounds_completed"] == 2
        lines = (tmp_path / name / "ledgers" / "client-000.jsonl").read_text().splitlines()
        ledgers[name] = [{k: json.loads(line)[k] for k in ("noise_multiplier", "sample_rate", "steps", "epsilon")}
                         for line in lines]
        metrics = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert all(m.get("participants") == 3 for m in metrics)  # no honest reply rejected by the update bound
    assert ledgers["plain"] == ledgers["regularised"]
    config = json.loads((tmp_path / "regularised" / "config.json").read_text())
    assert config["weight-decay"] == 0.5 and config["dropout"] == 0.2


def test_dropout_on_a_model_without_activations_is_refused_before_training(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", "simulate", "--preset", "quick",
                           "--model", "logreg", "--dropout", "0.3", "--run-dir", str(tmp_path), "--run-name", "x"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "no activation module" in proc.stderr and "Traceback" not in proc.stderr
