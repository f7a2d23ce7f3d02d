"""The data owner's guarantee: its own policy, its ledger across runs, conservative server charging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from independent_accounting import independent_pld_epsilon

from dpfl.privacy.owner_policy import OwnerPolicy, OwnerPolicyError, RunRequest, policy_violations
from dpfl.simulations.config import resolve
from dpfl.simulations.engines.simulate import simulate

BASE = {"dataset": "digits", "model": "mlp", "num-clients": 3, "num-server-rounds": 2, "batch-size": 32,
        "local-epochs": 1, "learning-rate": 0.1, "noise-multiplier": 1.0, "workers": 1, "delta": 1e-5,
        "target-epsilon": 0.0}


def write_policy(path: Path, state: Path, **extra: object) -> Path:
    values = {"data-source": "hospital", "max-epsilon": 50.0, "state-dir": str(state), **extra}
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(tmp_path: Path, name: str, policy: Path | None = None, **overrides):
    cfg = resolve({**BASE, "run-dir": str(tmp_path), "run-name": name, **overrides})
    return simulate(cfg, run_path=tmp_path / name, privacy_policy=str(policy) if policy else None)


def entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- the policy file ---------------------------------------------------------------------------------------
def test_a_policy_needs_a_data_source_and_a_budget_and_refuses_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(OwnerPolicyError, match="max-epsilon is missing"):
        OwnerPolicy.from_mapping({"data-source": "x"})
    with pytest.raises(OwnerPolicyError, match="data-source"):
        OwnerPolicy.from_mapping({"max-epsilon": 1.0})
    with pytest.raises(OwnerPolicyError, match="unknown key.*max-epsilom"):
        OwnerPolicy.from_mapping({"data-source": "x", "max-epsilon": 1.0, "max-epsilom": 9.0})
    with pytest.raises(OwnerPolicyError, match="not valid TOML"):
        (tmp_path / "bad.toml").write_text("max-epsilon = [")
        OwnerPolicy.load(tmp_path / "bad.toml")


def test_policy_violations_name_each_broken_limit(tmp_path: Path) -> None:
    policy = OwnerPolicy.from_mapping({"data-source": "x", "max-epsilon": 8.0, "min-noise-multiplier": 0.8})
    ok = RunRequest(dp=True, deterministic_noise=False, private_metrics=False, delta=1e-6, accountant="pld",
                    neighbouring="add-remove", noise_multiplier=1.0, declared_records=1000)
    assert policy_violations(policy, ok) == []
    bad = RunRequest(dp=True, deterministic_noise=True, private_metrics=True, delta=0.5, accountant="pld",
                     neighbouring="add-remove", noise_multiplier=0.5, declared_records=1000)
    words = " ".join(policy_violations(policy, bad))
    for key in ("deterministic-noise", "private-metrics", "max-delta", "min-noise-multiplier"):
        assert key in words
    # the default delta limit is 1 / N: a delta of 1/N or more can publish a record outright
    assert policy_violations(policy, RunRequest(**{**ok.__dict__, "delta": 2e-3}))


# -- a federation of policy holders ----------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [{"delta": 0.5}, {"noise-multiplier": 0.3}, {"deterministic-noise": True}],
                         ids=["delta-0.5", "sigma-below-minimum", "deterministic-noise"])
def test_every_policy_holder_declines_and_nothing_trains(tmp_path: Path, overrides: dict) -> None:
    state = tmp_path / "state"
    policy = write_policy(tmp_path / "policy.toml", state, **{"min-noise-multiplier": 0.5})
    out = run(tmp_path, "declined", policy, **overrides)
    summary = json.loads((out.run_path / "summary.json").read_text())
    assert summary["rounds_completed"] == 0
    assert "declined" in summary["stop_reason"] and "nothing was trained" in summary["stop_reason"]
    assert all(c["status"] == "declined (policy)" for c in summary["clients"].values())
    assert len(summary["clients"]) == 3
    assert not list(state.glob("*.jsonl")) or all(not entries(p) for p in state.glob("*.jsonl"))
    assert not any(entries(p) for p in (out.run_path / "ledgers").glob("*.jsonl"))


def test_a_second_run_on_the_same_records_starts_from_the_first_and_the_budget_stops_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    generous = write_policy(tmp_path / "generous.toml", state)
    first = run(tmp_path, "first", generous)
    ledger_file = state / "hospital-client-000.jsonl"
    after_first = entries(ledger_file)
    assert [e["run"] for e in after_first] == [str(first.run_path)] * 2
    eps_first = after_first[-1]["epsilon"]

    # a budget that covers the first run and one more round, not two
    second_eps = independent_pld_epsilon([*after_first, after_first[-1]], 1e-5)
    third_eps = independent_pld_epsilon([*after_first, after_first[-1], after_first[-1]], 1e-5)
    tight = write_policy(tmp_path / "tight.toml", state, **{"max-epsilon": (second_eps + third_eps) / 2})
    second = run(tmp_path, "second", tight)
    rows = entries(ledger_file)
    mine = [e for e in rows if e["run"] == str(second.run_path)]
    assert len(mine) == 1 and mine[0]["epsilon"] > eps_first  # composed with the first run, not from zero
    assert mine[0]["epsilon"] == pytest.approx(second_eps, rel=0.01)
    summary = json.loads((second.run_path / "summary.json").read_text())
    client = summary["clients"]["client-000"]
    assert client["prior_runs"] == [str(first.run_path)]
    assert client["prior_epsilon"] == pytest.approx(eps_first, rel=1e-6)
    assert summary["rounds_completed"] < 2 or client["participations"] == 1


def test_a_round_timeout_never_leaves_the_server_below_a_client(tmp_path: Path) -> None:
    """No reply arrives in time: every client sampled is still charged, at send, at its terms' release."""
    out = run(tmp_path, "timeout", **{"round-timeout": 0.05, "num-server-rounds": 1, "workers": 2})
    server = {p.stem: entries(p) for p in (out.run_path / "ledgers").glob("*.jsonl")}
    assert sorted(server) == ["client-000", "client-001", "client-002"]
    assert all(rows[-1]["charged"] == "at-send" and rows[-1]["epsilon"] > 0 for rows in server.values())
    summary = json.loads((out.run_path / "summary.json").read_text())
    assert summary["rounds_completed"] == 0
    for cid, rows in server.items():
        assert summary["epsilon_per_client"][cid] == pytest.approx(rows[-1]["epsilon"])
        paid = entries(out.run_path / "client-state" / f"{cid}.jsonl")  # a late client may have paid
        assert not paid or rows[-1]["epsilon"] >= paid[-1]["epsilon"] - 1e-12


@pytest.mark.parametrize("relation", ["add-remove", "replace-one"])
def test_the_ledgers_epsilon_is_dp_accountings_under_the_stated_relation(tmp_path: Path, relation: str) -> None:
    out = run(tmp_path, relation, neighbouring=relation)
    summary = json.loads((out.run_path / "summary.json").read_text())
    assert summary["neighbouring"] == relation
    for path in (out.run_path / "ledgers").glob("*.jsonl"):
        rows = entries(path)
        assert {e["neighbouring"] for e in rows} == {relation}
        assert rows[-1]["epsilon"] == pytest.approx(independent_pld_epsilon(rows, 1e-5, relation), rel=0.01)
    for path in (out.run_path / "client-state").glob("*.jsonl"):  # secure randomness is the default
        assert {e["randomness"] for e in entries(path)} == {"aes-256-ctr"}
    assert "AES-256-CTR" in (out.run_path / "report" / "report.md").read_text(encoding="utf-8")
    if relation == "add-remove":  # the public N is the nominal share, the same for every client
        assert len({entries(p)[0]["declared_records"] for p in (out.run_path / "ledgers").glob("*.jsonl")}) == 1


def test_not_private_is_stamped_in_every_output_of_a_deterministic_noise_run(tmp_path: Path) -> None:
    out = run(tmp_path, "stamped", **{"deterministic-noise": True})
    stamp = "NOT PRIVATE"
    files = [out.run_path / "metrics.jsonl", out.run_path / "summary.json",
             *(out.run_path / "ledgers").glob("*.jsonl"), *(out.run_path / "client-state").glob("*.jsonl"),
             *(out.run_path / "report").glob("report.*")]
    assert {p.name for p in files} >= {"report.md", "report.html", "report.json"} and len(files) >= 8
    for path in files:
        assert stamp in path.read_text(encoding="utf-8"), f"{path.name} lacks the NOT PRIVATE stamp"
    for line in (out.run_path / "metrics.jsonl").read_text().splitlines():
        assert json.loads(line)["privacy"] == stamp
    for path in (out.run_path / "client-state").glob("*.jsonl"):  # the owner's ledger names the generator
        assert {e["randomness"] for e in entries(path)} == {"torch-mt19937-seeded"}
    assert "Mersenne Twister" in (out.run_path / "report" / "report.md").read_text(encoding="utf-8")
