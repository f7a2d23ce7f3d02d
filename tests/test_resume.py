"""A run killed with SIGKILL in the middle of a round resumes to exactly the uninterrupted run's ledgers and model.

The reference runs 4 rounds uninterrupted. The other is killed once a client has paid for round 3 and before
the server finished it, then continued with ``dpfl resume``: its server and client ledgers must hold the same
rounds with the same epsilon (none twice, none lost), its metrics rounds 1..4 once each, and, with
deterministic noise, server momentum and an EMA, its final model must equal the reference's bit for bit (so
momentum, EMA and the sampling RNG were restored and the paid-for update was re-sent, not re-trained).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dpfl.server.resume import ResumeError, check_resumable
from dpfl.server.rundir import RunDirectory

CONFIG = {"dataset": "digits", "model": "mlp", "num-clients": 2, "num-server-rounds": 4, "batch-size": 32,
          "local-epochs": 3, "learning-rate": 0.1, "noise-multiplier": 1.0, "target-epsilon": 0.0,
          "deterministic-noise": True, "seed": 11, "workers": 1, "server-momentum": 0.9, "ema-decay": 0.5}
FIELDS = ("round", "noise_multiplier", "sample_rate", "steps", "delta", "accountant", "epsilon")


def _flags(cfg: dict) -> list[str]:
    out = []
    for key, value in cfg.items():
        out += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return out


def _dpfl(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", *args], capture_output=True, text=True,
                          timeout=600, **kwargs)


def _entries(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _ledgers(run: Path, folder: str) -> dict[str, list[tuple]]:
    return {p.stem: [tuple(e[k] for k in FIELDS) for e in _entries(p)] for p in sorted((run / folder).glob("*.jsonl"))}


def _kill_mid_round(run: Path, flags: list[str]) -> None:
    """Start the run, SIGKILL its whole process group once client-000 paid round 3 but client-001 has not."""
    proc = subprocess.Popen([sys.executable, "-m", "dpfl.simulations.cli.main", "simulate", *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first, second = run / "client-state" / "client-000.jsonl", run / "client-state" / "client-001.jsonl"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(e["round"] == 3 for e in _entries(first)) and not any(e["round"] == 3 for e in _entries(second)):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-round"


def test_a_simulation_killed_mid_round_resumes_to_the_uninterrupted_run(tmp_path: Path) -> None:
    reference = _dpfl("simulate", *_flags({**CONFIG, "run-dir": tmp_path, "run-name": "whole"}))
    assert reference.returncode == 0, reference.stdout[-2000:] + reference.stderr[-2000:]
    run = tmp_path / "killed"
    _kill_mid_round(run, _flags({**CONFIG, "run-dir": tmp_path, "run-name": "killed"}))
    assert not (run / "summary.json").exists()
    rows = [json.loads(x)["round"] for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert rows == [1, 2]  # killed inside round 3
    assert [e["round"] for e in _entries(run / "ledgers" / "client-001.jsonl")] == [1, 2, 3]  # charged at send

    resumed = _dpfl("resume", str(run))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "continuing after round 2 of 4" in resumed.stdout
    whole = tmp_path / "whole"
    assert _ledgers(run, "ledgers") == _ledgers(whole, "ledgers")  # the server's: same rounds, same epsilon
    assert _ledgers(run, "client-state") == _ledgers(whole, "client-state")  # the clients' own
    for path in (run / "ledgers").glob("*.jsonl"):
        assert [e["round"] for e in _entries(path)] == [1, 2, 3, 4]
    rows = [json.loads(x)["round"] for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert rows == [1, 2, 3, 4]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epsilon_per_client"] == json.loads((whole / "summary.json").read_text())["epsilon_per_client"]
    a = torch.load(run / "model.pt", weights_only=True)
    b = torch.load(whole / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_when_the_checkpoint_and_a_ledger_disagree(tmp_path: Path) -> None:
    done = _dpfl("simulate", *_flags({**CONFIG, "num-server-rounds": 2, "local-epochs": 1, "run-dir": tmp_path,
                                      "run-name": "r"}))
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "r"
    assert check_resumable(RunDirectory(run)).round == 2
    ledger = run / "ledgers" / "client-000.jsonl"
    lines = ledger.read_text().splitlines(keepends=True)
    ledger.write_text("".join(lines[:1]))  # one round of privacy loss gone
    with pytest.raises(ResumeError, match="truncated"):
        check_resumable(RunDirectory(run))
    (run / "summary.json").unlink()  # as if it had been killed
    out = _dpfl("resume", str(run))
    assert out.returncode == 2 and "the checkpoint and the ledgers disagree" in out.stdout + out.stderr
    ledger.unlink()
    with pytest.raises(ResumeError, match="deleted"):
        check_resumable(RunDirectory(run))


def test_a_finished_run_is_not_resumed(tmp_path: Path) -> None:
    done = _dpfl("simulate", *_flags({**CONFIG, "num-server-rounds": 1, "local-epochs": 1, "run-dir": tmp_path,
                                      "run-name": "r"}))
    assert done.returncode == 0
    out = _dpfl("resume", str(tmp_path / "r"))
    assert out.returncode == 2 and "only an interrupted run can be resumed" in out.stdout + out.stderr
    again = _dpfl("simulate", *_flags({**CONFIG, "num-server-rounds": 1, "run-dir": tmp_path, "run-name": "r"}))
    assert again.returncode == 2 and "dpfl resume" in again.stdout + again.stderr


@pytest.mark.slow
def test_a_launched_federation_killed_mid_round_resumes_to_the_same_ledgers(tmp_path: Path) -> None:
    """SIGKILL the launcher and every process of its federation (a machine crash) while round 2 is trained,
    then ``dpfl resume``: a fresh federation continues, and the ledgers equal an uninterrupted run's."""
    from dpfl.simulations.deploy.processes import pids_with_marker

    cfg = {**CONFIG, "num-server-rounds": 3, "local-epochs": 1, "round-timeout": 120}
    cfg.pop("workers")
    reference = _dpfl("simulate", *_flags({**cfg, "run-dir": tmp_path, "run-name": "whole"}))
    assert reference.returncode == 0, reference.stderr[-2000:]
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "dpfl.simulations.cli.main", "launch",
                             *_flags({**cfg, "run-dir": tmp_path, "run-name": "killed"})],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 400
    marker = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            fed = run / "logs" / "federation.json"
            if marker is None and fed.exists():
                marker = json.loads(fed.read_text())["marker"]
            paid = [e for p in (run / "client-state").glob("*.jsonl") for e in _entries(p) if e["round"] == 2]
            rows = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
            if paid and len(rows) == 1:
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in pids_with_marker(marker) if marker else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(30)
    assert marker is not None and not (run / "summary.json").exists()
    resumed = _dpfl("resume", str(run), "--timeout", "400")
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-2000:]
    whole = tmp_path / "whole"
    assert _ledgers(run, "ledgers") == _ledgers(whole, "ledgers")
    assert _ledgers(run, "client-state") == _ledgers(whole, "client-state")
    assert [json.loads(x)["round"] for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()] == [1, 2, 3]
