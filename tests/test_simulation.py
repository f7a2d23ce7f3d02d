"""End to end on the in-process engine: learning, cumulative epsilon, the mechanism that really ran."""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import pytest
import torch
from independent_accounting import independent_pld_epsilon
from opacus.accountants.analysis import rdp as opacus_rdp

from dpfl.simulations.config import resolve
from dpfl.simulations.engines.simulate import simulate

BASE = {"dataset": "digits", "model": "mlp", "num-clients": 3, "num-server-rounds": 2, "batch-size": 32,
        "local-epochs": 1, "learning-rate": 0.1, "noise-multiplier": 1.0, "workers": 1, "delta": 1e-5,
        "target-epsilon": 0.0}


def run(tmp_path: Path, name: str = "run", **overrides):
    cfg = resolve({**BASE, "run-dir": str(tmp_path), "run-name": name, **overrides})
    return simulate(cfg, run_path=tmp_path / name)


def ledger(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def independent_rdp_epsilon(entries: list[dict], delta: float) -> float:
    """Opacus' and dp-accounting's RDP over the same orders; dpfl reports the larger."""
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 257))
    opacus_total = sum(opacus_rdp.compute_rdp(q=e["sample_rate"], noise_multiplier=e["noise_multiplier"],
                                              steps=e["steps"], orders=orders) for e in entries)
    eps_opacus, _ = opacus_rdp.get_privacy_spent(orders=orders, rdp=opacus_total, delta=delta)
    acc = dp_accounting.rdp.RdpAccountant(orders)
    for e in entries:
        acc.compose(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(e["sample_rate"], dp_accounting.GaussianDpEvent(e["noise_multiplier"])),
            e["steps"]))
    return max(float(eps_opacus), acc.get_epsilon(delta))


def test_digits_learns_and_writes_the_run_directory(tmp_path: Path) -> None:
    out = run(tmp_path, **{"num-server-rounds": 3, "noise-multiplier": 0.8})
    assert out.result is not None
    assert out.result.final_accuracy > 0.6  # chance is 0.1
    rows = [json.loads(x) for x in (out.run_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    for key in ("round", "accuracy", "loss", "epsilon_max", "seconds"):
        assert key in rows[0]
    assert (out.run_path / "config.json").exists() and (out.run_path / "model.pt").exists()
    ledgers = sorted((out.run_path / "ledgers").glob("*.jsonl"))
    assert len(ledgers) == 3
    entry = ledger(ledgers[0])[0]
    for key in ("round", "mechanism", "noise_multiplier", "sample_rate", "steps", "delta", "accountant", "epsilon"):
        assert key in entry
    # the federation's epsilon is the max over clients, not the mean
    assert rows[-1]["epsilon_max"] == pytest.approx(max(rows[-1]["epsilon"].values()))


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_cumulative_epsilon_equals_independent_accountant(tmp_path: Path, accountant: str) -> None:
    out = run(tmp_path, **{"num-server-rounds": 3, "accountant": accountant, "partition": "dirichlet",
                           "dirichlet-alpha": 1.0})
    rows = [json.loads(x) for x in (out.run_path / "metrics.jsonl").read_text().splitlines()]
    for path in (out.run_path / "ledgers").glob("*.jsonl"):
        entries = ledger(path)
        assert [e["round"] for e in entries] == [1, 2, 3]  # composed over every round, never reset
        for r, entry in enumerate(entries, start=1):
            prefix = entries[:r]
            if accountant == "rdp":
                assert entry["epsilon"] == pytest.approx(independent_rdp_epsilon(prefix, 1e-5), rel=1e-9)
            else:
                assert entry["epsilon"] == pytest.approx(independent_pld_epsilon(prefix, 1e-5), rel=0.01)
            assert rows[r - 1]["epsilon"][path.stem] == pytest.approx(entry["epsilon"], rel=1e-12)
        assert entries[-1]["epsilon"] > entries[0]["epsilon"] * 1.3  # three rounds cost more than one


def test_ledger_matches_what_the_training_loop_did(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Count optimizer steps and the sampler's rate during training; they must equal the ledger's."""
    import dpfl.client.training as training

    calls: list[tuple[int, float]] = []
    real_batch = training.poisson_batch

    def counting_batch(n: int, q: float, generator: torch.Generator) -> torch.Tensor:
        calls.append((n, q))
        return real_batch(n, q, generator)

    steps_taken = {"n": 0}
    real_step = training.DPOptimizer.step

    def counting_step(self, *args, **kwargs):
        steps_taken["n"] += 1
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(training, "poisson_batch", counting_batch)
    monkeypatch.setattr(training.DPOptimizer, "step", counting_step)
    out = run(tmp_path, **{"num-clients": 2, "num-server-rounds": 1, "local-epochs": 2})
    entries = [ledger(p)[0] for p in sorted((out.run_path / "ledgers").glob("*.jsonl"))]
    assert steps_taken["n"] == sum(e["steps"] for e in entries) == len(calls)
    sizes = sorted({n for n, _ in calls})
    for e in entries:
        assert e["noise_multiplier"] == 1.0
        matching = [q for n, q in calls if q == e["sample_rate"]]
        assert len(matching) >= e["steps"]
        assert any(abs(e["sample_rate"] - 32 / n) < 1e-12 for n in sizes)


def test_same_seed_draws_different_noise(tmp_path: Path) -> None:
    a = run(tmp_path, "a", **{"num-server-rounds": 1})
    b = run(tmp_path, "b", **{"num-server-rounds": 1})
    wa = torch.load(a.run_path / "model.pt", weights_only=True)
    wb = torch.load(b.run_path / "model.pt", weights_only=True)
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_deterministic_noise_is_reproducible_and_stamped_not_private(tmp_path: Path) -> None:
    a = run(tmp_path, "a", **{"num-server-rounds": 1, "deterministic-noise": True})
    b = run(tmp_path, "b", **{"num-server-rounds": 1, "deterministic-noise": True})
    wa = torch.load(a.run_path / "model.pt", weights_only=True)
    wb = torch.load(b.run_path / "model.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    summary = json.loads((a.run_path / "summary.json").read_text())
    assert summary["not_private"] is True
    assert any("NOT PRIVATE" in line for line in summary["privacy_statement"])


def test_dp_off_runs_on_the_same_path_without_epsilon(tmp_path: Path) -> None:
    out = run(tmp_path, **{"dp": False})
    summary = json.loads((out.run_path / "summary.json").read_text())
    assert summary["epsilon_max"] is None and summary["not_private"] is True
    assert out.result is not None and out.result.final_accuracy > 0.6


def test_client_with_fewer_records_than_a_batch_still_trains(tmp_path: Path) -> None:
    out = run(tmp_path, **{"num-clients": 40, "num-server-rounds": 1, "batch-size": 64})
    entries = [ledger(p)[0] for p in (out.run_path / "ledgers").glob("*.jsonl")]
    assert len(entries) == 40
    assert all(e["sample_rate"] == 1.0 for e in entries)  # q = min(1, batch / records)


def test_worker_pool_gives_the_same_ledgers(tmp_path: Path) -> None:
    out = run(tmp_path, **{"workers": 2, "num-server-rounds": 2})
    assert out.result is not None and out.result.rounds_completed == 2
    assert len(list((out.run_path / "ledgers").glob("*.jsonl"))) == 3


def test_reply_carries_no_private_metrics_by_default(tmp_path: Path) -> None:
    from client_messages import train_call

    from dpfl.simulations.apps import clientapp

    cfg = resolve({**BASE, "run-dir": str(tmp_path)}).as_dict()
    msg, ctx = train_call(cfg, tmp_path)
    reply = clientapp(msg, ctx)
    keys = set(reply.content["metrics"].keys())
    assert keys == {"num-examples", "epsilon", "noise-multiplier", "sample-rate", "steps", "partition-id"}
    # the ledger survives in context.state for the next round
    assert "dpfl-ledger" in ctx.state.config_records
