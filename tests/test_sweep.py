"""Sweeps: expansion and validation, execution and resume, results and report, honest tuning epsilon."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import dpfl.simulations.engines.simulate as sim
from dpfl.privacy import epsilon, release_from_dict
from dpfl.privacy.tuning import tnb_mean
from dpfl.simulations.sweeps import accounting, execution, runner, store
from dpfl.simulations.sweeps.groups import Group, group_rows, pareto_front
from dpfl.simulations.sweeps.runner import SweepOutcome, run_sweep
from dpfl.simulations.sweeps.spec import SweepError, draw_trial_count, expand, point_id, spec_from_dict

BASE = {"dataset": "digits", "model": "mlp", "num-clients": 2, "num-server-rounds": 1, "batch-size": 32,
        "local-epochs": 1, "learning-rate": 0.1, "delta": 1e-5}
TINY = {"sweep": {"name": "tiny"}, "base": BASE,
        "grid": {"noise-multiplier": [0.8, 1.5], "max-grad-norm": [0.5, 1.0]}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SweepOutcome:
    out = tmp_path_factory.mktemp("tiny") / "sweep"
    return run_sweep(spec_from_dict(TINY), out, jobs=1)


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# --- expansion and validation (no training) ------------------------------------------------------------------
def test_grid_expansion_adds_one_baseline_per_non_privacy_setting() -> None:
    spec = spec_from_dict({"base": BASE, "grid": {"target-epsilon": [1.0, 2.0], "seed": [1, 2],
                                                  "local-epochs": [1]}})
    points = expand(spec)
    private = [p for p in points if p.kind == "private"]
    baselines = [p for p in points if p.kind == "baseline"]
    assert len(private) == 4 and len(baselines) == 2  # one per seed: the non-privacy settings
    for b in baselines:
        assert b.config is not None and b.config["dp"] is False and b.config["target-epsilon"] == 0.0
        assert b.params["target-epsilon"] is None
    assert len({p.id for p in points}) == len(points)
    assert expand(spec)[0].id == points[0].id  # stable names: resume relies on them


def test_linked_axis_and_point_ids_ignore_location() -> None:
    spec = spec_from_dict({"base": BASE, "grid": {"clients": [{"num-clients": 2, "fraction-train": 1.0},
                                                              {"num-clients": 4, "fraction-train": 0.5}]}})
    points = [p for p in expand(spec) if p.kind == "private"]
    assert [(p.config["num-clients"], p.config["fraction-train"]) for p in points] == [(2, 1.0), (4, 0.5)]
    cfg = dict(points[0].config)
    assert point_id({**cfg, "run-dir": "/elsewhere", "run-name": "x"}) == points[0].id


def test_invalid_values_become_failed_points_not_a_failed_sweep() -> None:
    points = expand(spec_from_dict({"base": BASE, "grid": {"max-grad-norm": [1.0, -1.0]}}))
    bad = [p for p in points if not p.valid]
    assert len(bad) == 1 and "max-grad-norm=-1.0" in bad[0].error and "expected a number > 0" in bad[0].error
    assert sum(p.valid for p in points) == 2  # the good point and its baseline


@pytest.mark.parametrize("data, message", [
    ({"base": {"no-such-key": 1}}, "unknown config key"),
    ({"grid": {"seed": []}}, "non-empty list"),
    ({"grid": {"seed": [1]}, "random": {"trials": 3, "seed": [1, 2]}}, "both [grid] and [random]"),
    ({"random": {"trials": 0}}, "trials"),
    ({"random": {"trials": 3, "learning-rate": {"low": 0, "high": 1, "log": True}}}, "low > 0"),
    ({"bogus": {}, "grid": {}}, "unknown table"),
])
def test_sweep_spec_errors_name_the_problem(data: dict, message: str) -> None:
    with pytest.raises(SweepError) as info:
        spec_from_dict(data)
    assert message in str(info.value)


def test_random_search_draws_are_seeded_but_the_trial_count_is_not(tmp_path: Path) -> None:
    data = {"sweep": {"seed": 7}, "base": BASE,
            "random": {"trials": 4, "learning-rate": {"low": 0.01, "high": 1.0, "log": True},
                       "batch-size": {"low": 16, "high": 64}, "optimizer": {"choices": ["sgd", "adam"]}}}
    spec = spec_from_dict(data)
    a, b = expand(spec, trials=3), expand(spec, trials=3)
    assert [p.params for p in a] == [p.params for p in b]
    for p in a:
        assert 0.01 <= p.params["learning-rate"] <= 1.0 and isinstance(p.params["batch-size"], int)
    points, k = runner.plan_sweep(spec, tmp_path, resume=False)
    runner.save_plan(tmp_path, spec, points, k)
    again, k2 = runner.plan_sweep(spec, tmp_path, resume=True)  # resuming keeps K and the draws
    assert k2 == k and [p.id for p in again] == [p.id for p in points]
    changed = spec_from_dict({**data, "random": {**data["random"], "trials": 9}})
    with pytest.raises(SweepError, match="different sweep spec"):
        runner.plan_sweep(changed, tmp_path, resume=True)


def test_trial_count_distributions() -> None:
    rng = np.random.default_rng(0)
    assert draw_trial_count("fixed", 6) == 6
    poisson = [draw_trial_count("poisson", 5.0, rng=rng) for _ in range(3000)]
    assert abs(np.mean(poisson) - 5.0) < 0.2
    for eta in (1.0, 0.0, 0.5):
        draws = [draw_trial_count("truncated-negative-binomial", 5.0, eta, rng=rng) for _ in range(3000)]
        assert min(draws) >= 1 and abs(np.mean(draws) - 5.0) < 0.4, eta
    assert tnb_mean(1.0, 0.2) == pytest.approx(5.0)  # geometric: 1/gamma


# --- a tiny sweep, end to end --------------------------------------------------------------------------------------
def test_tiny_sweep_writes_table_and_report(tiny: SweepOutcome) -> None:
    out = tiny.out
    rows = _rows(out)
    assert len(rows) == 5  # 2 x 2 private points + the non-private baseline
    assert {r["status"] for r in rows} == {"ok"}
    assert sorted(r["kind"] for r in rows) == ["baseline"] + ["private"] * 4
    for key in ("noise-multiplier", "max-grad-norm", "final_accuracy", "best_accuracy", "epsilon", "delta",
                "wall_seconds", "status"):
        assert key in rows[0]
    baseline = next(r for r in rows if r["kind"] == "baseline")
    assert baseline["epsilon"] == "inf"
    private = [r for r in rows if r["kind"] == "private"]
    assert all(float(r["epsilon"]) > 0 and float(r["delta"]) == 1e-5 for r in private)
    data = json.loads((out / "results.json").read_text())
    assert len(data["rows"]) == 5 and data["rows"][0]["accuracy_by_round"]
    md = (out / "report.md").read_text()
    assert "applies to the selected model" in md and "Pareto" in md
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "http://" not in page and "https://" not in page and "<script" not in page and "<link" not in page
    for name in ("accuracy_vs_epsilon", "accuracy_vs_rounds", "parameter_effects"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    # the baseline is the most accurate here, and still never the selected result
    tuning = json.loads((out / "tuning.json").read_text())
    assert tuning["selected"] in {r["id"] for r in private}
    best_private = max(private, key=lambda r: float(r["final_accuracy"]))
    assert tuning["selected"] == best_private["id"]
    assert tuning["epsilon"] > tuning["selected_epsilon_alone"]


def test_grid_tuning_epsilon_composes_every_private_ledger_per_client(tiny: SweepOutcome) -> None:
    """The sweep's tuning epsilon is the runs' own accountant over each client's ledgers of all runs."""
    tuning = json.loads((tiny.out / "tuning.json").read_text())
    assert tuning["method"] == "pld-per-client" and tuning["private_runs"] == 4
    per_client: dict[str, list] = {}
    for run in sorted((tiny.out / "runs").iterdir()):
        config = json.loads((run / "config.json").read_text())
        if not config["dp"]:
            continue
        assert config["accountant"] == "pld"
        for ledger in sorted((run / "ledgers").glob("*.jsonl")):
            per_client.setdefault(ledger.stem, []).extend(
                release_from_dict(json.loads(line)) for line in ledger.read_text().splitlines())
    assert len(per_client) == 2 and all(len(v) == 4 for v in per_client.values())  # 4 runs x 1 round
    direct = max(epsilon(releases, tuning["delta"], "pld") for releases in per_client.values())
    assert tuning["epsilon"] == pytest.approx(direct, rel=1e-9)
    single = max(float(r["epsilon"]) for r in _rows(tiny.out) if r["kind"] == "private")
    assert tuning["epsilon"] > single
    # and with different partitions (another seed), the RDP path is used and is no smaller than one run
    runs = accounting.private_runs(tiny.out)
    shifted = [accounting.PrivateRun(r.path, r.point_id, r.delta, r.accountant, f"p{i}", r.ledgers, False)
               for i, r in enumerate(runs)]
    eps_rdp, method, _ = accounting.grid_tuning_epsilon(shifted, tuning["delta"])
    assert method == "rdp-max-per-run" and eps_rdp >= tuning["epsilon"] * 0.95


def test_resume_skips_finished_points_and_reruns_incomplete_ones(tiny: SweepOutcome,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = sim.simulate

    def counting(cfg, **kwargs):
        calls.append(str(kwargs.get("run_path")))
        return real(cfg, **kwargs)

    monkeypatch.setattr(sim, "simulate", counting)
    spec = spec_from_dict(TINY)
    with pytest.raises(SweepError, match="--resume"):
        run_sweep(spec, tiny.out, jobs=1)
    again = run_sweep(spec, tiny.out, jobs=1, resume=True)
    assert calls == [] and again.reused == 5 and again.ran == 0
    victim = next(p for p in again.points if p.kind == "private")
    (tiny.out / "runs" / victim.id / "summary.json").unlink()  # as if killed before the end
    third = run_sweep(spec, tiny.out, jobs=1, resume=True)
    assert len(calls) == 1 and victim.id in calls[0] and third.ran == 1 and third.reused == 4
    assert (tiny.out / "attempts" / f"{victim.id}-1" / "ledgers").is_dir()
    tuning = json.loads((tiny.out / "tuning.json").read_text())
    assert tuning["private_runs"] == 5  # the unfinished attempt's releases were spent: they count


def test_a_failing_point_is_recorded_while_the_others_finish(tmp_path: Path) -> None:
    spec = spec_from_dict({"base": BASE, "grid": {"noise-multiplier": [1.0], "max-grad-norm": [1.0, -1.0],
                                                  "model": ["mlp", "cnn"]}})
    outcome = run_sweep(spec, tmp_path / "s", jobs=1)
    by_status: dict[str, list[dict]] = {}
    for row in outcome.rows:
        by_status.setdefault(row["status"], []).append(row)
    errors = " ".join(r["error"] for r in by_status["failed"])
    assert "max-grad-norm=-1.0 is not valid" in errors  # invalid before anything ran
    assert "cnn" in errors  # cnn does not fit 8x8 digits: fails in preflight, inside its point
    assert len(by_status["ok"]) == 2  # mlp private + its baseline
    assert outcome.failed == len(by_status["failed"])
    assert "Failed points" in (outcome.out / "report.md").read_text()


def test_run_directory_ships_back_without_checkpoints(tiny: SweepOutcome, tmp_path: Path) -> None:
    src = next(p for p in (tiny.out / "runs").iterdir() if (p / "summary.json").exists())
    target = tmp_path / "runs" / src.name
    execution.unpack_run(execution.pack_run(src), target, tmp_path / "attempts")
    assert store.run_complete(target) and not (target / "checkpoints").exists()
    assert (target / "summary.json").read_text() == (src / "summary.json").read_text()


def test_pareto_front_and_seed_groups() -> None:
    def g(key: str, eps: float, acc: float) -> Group:
        return Group(key=key, kind="private", params={}, setting="{}", eps_mean=eps, acc_mean=acc)

    groups = [g("a", 1, 0.6), g("b", 2, 0.7), g("c", 2, 0.65), g("d", 4, 0.7), g("e", 8, 0.8)]
    assert [x.key for x in pareto_front(groups)] == ["a", "b", "e"]
    rows = [{"id": f"p{s}", "kind": "private", "params": {"target-epsilon": 1.0, "seed": s}, "status": "ok",
             "final_accuracy": acc, "best_accuracy": acc, "epsilon": eps, "accuracy_by_round": [acc],
             "not_private": False} for s, acc, eps in ((1, 0.5, 1.0), (2, 0.7, 1.2))]
    (group,) = group_rows(rows, {"target-epsilon"})
    assert group.acc_mean == pytest.approx(0.6) and group.acc_sd == pytest.approx(math.sqrt(0.02))
    assert group.eps_mean == pytest.approx(1.1) and len(group.ids) == 2


# --- command line, worker processes ---------------------------------------------------------------------------------
def test_cli_runs_points_in_worker_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dpfl.simulations.cli import main as cli

    out = tmp_path / "cli"
    code = cli.main(["sweep", "--dataset", "digits", "--model", "mlp", "--num-clients", "2", "--num-server-rounds",
                 "1", "--local-epochs", "1", "--delta", "1e-5", "--grid", "noise-multiplier=1.0", "--jobs", "2",
                 "--out", str(out)])
    assert code == 0
    rows = _rows(out)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}
    pids = {json.loads((out / r["run_dir"] / "point.json").read_text())["pid"] for r in rows}
    assert os.getpid() not in pids  # ran in worker processes, not in this one
    assert cli.main(["sweep", "--config", str(tmp_path / "missing.toml")]) == 2


# --- Ray: a local two-node cluster ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_start(args: list[str], log: Path) -> subprocess.Popen:
    """`ray start --block` in its own session, so the whole node stops with one signal to its group."""
    ray_bin = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    return subprocess.Popen([ray_bin, "start", "--block", "--disable-usage-stats", "--node-ip-address",
                             "127.0.0.1", "--num-cpus", "1", "--object-store-memory", str(200 * 1024**2), *args],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.mark.slow
def test_tiny_sweep_on_a_two_node_ray_cluster(tmp_path: Path) -> None:
    import ray

    port = _free_port()
    address = f"127.0.0.1:{port}"
    ray_tmp = Path(tempfile.mkdtemp(prefix="dpfl-ray-", dir="/tmp"))  # Unix socket paths must stay short
    head = _ray_start(["--head", "--port", str(port), "--temp-dir", str(ray_tmp), "--include-dashboard",
                       "false"], tmp_path / "head.log")
    nodes = [head]
    try:
        deadline = time.time() + 90
        while "Ray runtime started" not in (tmp_path / "head.log").read_text():
            assert head.poll() is None and time.time() < deadline, (tmp_path / "head.log").read_text()
            time.sleep(1)
        nodes.append(_ray_start(["--address", address], tmp_path / "node.log"))
        ray.init(address=address)
        try:
            while len([n for n in ray.nodes() if n["Alive"]]) < 2:
                assert time.time() < deadline, (tmp_path / "node.log").read_text()
                time.sleep(1)
        finally:
            ray.shutdown()
        outcome = run_sweep(spec_from_dict(TINY), tmp_path / "sweep", jobs=2, engine="ray", ray_address=address)
        assert {r["status"] for r in outcome.rows} == {"ok"} and len(outcome.rows) == 5
        assert (outcome.out / "report.html").exists()
        nodes_used = {json.loads((outcome.out / r["run_dir"] / "point.json").read_text()).get("node")
                      for r in outcome.rows}
        assert len(nodes_used) == 2, nodes_used  # both nodes ran points
    finally:
        for proc in reversed(nodes):
            _stop(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)
