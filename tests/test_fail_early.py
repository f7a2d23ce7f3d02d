"""Inputs that cannot make a complete run are refused before any client trains: one line, exit 2, no run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BASE = ["--dataset", "digits", "--model", "mlp", "--num-clients", "2", "--num-server-rounds", "1"]

CASES = {
    "huge seed": (["--seed", "99999999999999999999999"], "seed="),
    "negative seed": (["--seed", "-3"], "seed="),
    "negative delta in scientific notation": (["--delta", "-1e-5"], "delta=-1e-05"),
    "absurd number of rounds": (["--num-server-rounds", "1000000"], "num-server-rounds=1000000"),
    "unwritable run dir": (["--run-dir", "/proc/dpfl-cannot-write"], "run-dir='/proc/dpfl-cannot-write'"),
    "unwritable state dir": (["--state-dir", "/proc/dpfl-cannot-write"], "state-dir="),
    "cuda without a GPU": (["--device", "cuda"], "device='cuda'"),
    "budget below the target": (["--epsilon-budget", "1"], "above epsilon-budget=1"),
    "budget below one round": (["--noise-multiplier", "0.3", "--epsilon-budget", "1"],
                               "below one round's epsilon"),
}


def _dpfl(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2_before_training(name: str, tmp_path: Path) -> None:
    extra, needle = CASES[name]
    if name == "cuda without a GPU":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    proc = _dpfl(["simulate", *BASE, *extra], tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], out
    assert not list(tmp_path.glob("runs/*/metrics.jsonl")) and not list(tmp_path.glob("runs/*/ledgers/*"))


def test_launch_refuses_cuda_without_a_gpu_before_starting_processes(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = _dpfl(["launch", "--clients", "2", *BASE[:4], "--num-server-rounds", "1", "--device", "cuda"], tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out and "device='cuda'" in out, out
    assert not list(tmp_path.glob("runs/*/metrics.jsonl")) and not list(tmp_path.glob("runs/*/ledgers/*"))
