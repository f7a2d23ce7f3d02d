"""Budgets are enforced before a release; target epsilon is met for the whole schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpfl.privacy import DpSgdRelease, epsilon
from dpfl.simulations.config import resolve
from dpfl.simulations.engines.simulate import simulate

BASE = {"dataset": "digits", "model": "logreg", "num-clients": 3, "batch-size": 32, "local-epochs": 1, "workers": 1,
        "delta": 1e-5, "target-epsilon": 0.0, "learning-rate": 0.2,
        "validation-fraction": 0.1}  # client sizes (hence the epsilons the tests name) as when this was written


def _run(tmp_path: Path, **overrides):
    cfg = resolve({**BASE, "run-dir": str(tmp_path), "run-name": "r", **overrides})
    return simulate(cfg, run_path=tmp_path / "r")


def _ledgers(run: Path) -> dict[str, list[dict]]:
    return {p.stem: [json.loads(x) for x in p.read_text().splitlines()] for p in (run / "ledgers").glob("*.jsonl")}


def test_budget_stops_the_run_cleanly_with_no_client_over_budget(tmp_path: Path) -> None:
    # these clients reach about 2.5, 3.1, 3.6 after rounds 1-3: a budget of 3.5 allows two rounds
    out = _run(tmp_path, **{"num-server-rounds": 5, "noise-multiplier": 1.0, "epsilon-budget": 3.5})
    assert out.result is not None
    assert out.result.rounds_completed == 2
    assert "may still train" in out.result.stop_reason
    for entries in _ledgers(out.run_path).values():
        assert entries and entries[-1]["epsilon"] <= 3.5
        releases = [DpSgdRelease.from_dict(e) for e in entries]
        assert epsilon(releases, 1e-5, "pld") <= 3.5  # independent recomputation
    summary = json.loads((out.run_path / "summary.json").read_text())
    assert summary["stop_reason"]
    assert all(c["status"] in ("exhausted", "active") for c in summary["clients"].values())


def test_client_declines_when_its_own_ledger_says_no(tmp_path: Path) -> None:
    """The client refuses on its own: the decline is an error reply with the budget code."""
    from client_messages import train_call

    from dpfl.privacy import wire
    from dpfl.simulations.apps import clientapp

    cfg = resolve({**BASE, "run-dir": str(tmp_path), "epsilon-budget": 0.5, "noise-multiplier": 1.0}).as_dict()
    msg, ctx = train_call(cfg, tmp_path)
    reply = clientapp(msg, ctx)
    assert reply.has_error() and reply.error.code == wire.BUDGET_EXHAUSTED
    assert "budget" in reply.error.reason
    assert not (tmp_path / "client-state" / "client-000.jsonl").exists()  # nothing released, nothing recorded


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_target_epsilon_is_met_and_nearly_reached(tmp_path: Path, accountant: str) -> None:
    out = _run(tmp_path, **{"num-server-rounds": 3, "target-epsilon": 2.0, "accountant": accountant})
    assert out.result is not None and out.result.rounds_completed == 3
    final = [entries[-1]["epsilon"] for entries in _ledgers(out.run_path).values()]
    assert max(final) <= 2.0
    assert max(final) >= 2.0 * 0.97  # within a few percent of the target
    assert set(out.calibrated_sigma.values())  # the CLI says what it chose
