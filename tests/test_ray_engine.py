"""Flower's Ray simulation engine: `dpfl simulate --engine ray` and the plain Flower-native `flwr run .`.

Both start a detached local SuperLink that outlives `flwr run`; after each run nothing of it may be left.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from dpfl.privacy.rundata import read_summary
from dpfl.simulations.config import resolve
from dpfl.simulations.deploy.flower import repo_root
from dpfl.simulations.deploy.processes import free_ports, listening_ports, pids_with_marker
from dpfl.simulations.deploy.supervisor import Supervisor

ROOT = Path(__file__).resolve().parent.parent
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None or shutil.which("flwr") is None,
                               reason="needs flwr[simulation] (Ray)")
BASE = {"dataset": "digits", "model": "mlp", "num-clients": 2, "num-server-rounds": 2, "batch-size": 64,
        "delta": 1e-5, "deterministic-noise": True, "seed": 7}


def local_superlinks(marker: str) -> list[str]:
    """Live `flower-superlink` processes whose command line names ``marker`` (their FLWR_HOME)."""
    ps = subprocess.run(["ps", "-ww", "-eo", "stat,args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in ps if "flower-superlink" in line and marker in line and not line.startswith("Z")]


def test_repo_root_is_the_source_checkout() -> None:
    assert repo_root() == ROOT and (ROOT / "simulations" / "apps.py").exists()


def test_ray_command_names_the_federation_size_and_every_key() -> None:
    from dpfl.simulations.engines.ray_engine import ray_command

    cmd = ray_command(ROOT, Path("/tmp/run.toml"), 5, 1.0)
    assert cmd[:4] == ["flwr", "run", str(ROOT), "local"]
    assert "num-supernodes=5 client-resources-num-cpus=1" in cmd and "--stream" in cmd
    assert cmd[cmd.index("--run-config") + 1] == "/tmp/run.toml"


@needs_ray
@pytest.mark.slow
def test_ray_engine_runs_the_same_apps_and_leaves_nothing_running(tmp_path: Path) -> None:
    from dpfl.simulations.engines.simulate import simulate

    cfg = resolve({**BASE, "run-dir": str(tmp_path), "run-name": "ray"})
    simulate(cfg, run_path=tmp_path / "ray", engine="ray")
    ray_summary = read_summary(tmp_path / "ray")
    assert ray_summary is not None and ray_summary["rounds_completed"] == 2
    for name in ("config.json", "metrics.jsonl", "model.pt", "logs/ray.log", "logs/run-config.toml"):
        assert (tmp_path / "ray" / name).exists(), name
    engine = json.loads((tmp_path / "ray" / "logs" / "ray-engine.json").read_text())
    assert pids_with_marker(engine["marker"]) == []  # the detached SuperLink, SuperExec, Ray: all gone
    assert local_superlinks(Path(engine["flower_home"]).name) == []
    assert engine["superlink_port"] not in listening_ports()

    simulate(resolve({**BASE, "run-dir": str(tmp_path), "run-name": "inprocess", "workers": 1}),
             run_path=tmp_path / "inprocess")
    reference = read_summary(tmp_path / "inprocess")
    assert reference is not None
    assert ray_summary["epsilon_per_client"] == reference["epsilon_per_client"]
    assert abs(ray_summary["final_accuracy"] - reference["final_accuracy"]) <= 0.01


@needs_ray
@pytest.mark.slow
def test_flower_native_flwr_run_smoke(tmp_path: Path) -> None:
    """`flwr run .` from the checkout with pyproject defaults, as a Flower user would; then stop the detached
    local SuperLink it leaves behind (found through the supervisor's marker in its environment)."""
    home = Path(tempfile.mkdtemp(prefix="dpfl-native-"))
    link, control = free_ports(2)
    overrides = {"dataset": "digits", "model": "mlp", "num-clients": 2, "num-server-rounds": 1,
                 "run-dir": str(tmp_path), "run-name": "native"}
    run_config = " ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items())
    lines: list[str] = []
    sup = Supervisor(tmp_path / "logs", lambda proc, line: lines.append(line))
    try:
        proc = sup.start("flwr", ["flwr", "run", ".", "--federation-config", "num-supernodes=2",
                                  "--run-config", run_config, "--stream"], cwd=str(ROOT),
                         env={"FLWR_HOME": str(home), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(link),
                              "FLWR_LOCAL_CONTROL_API_PORT": str(control)})
        deadline = time.monotonic() + 400
        while proc.poll() is None:
            assert time.monotonic() < deadline, "\n".join(lines[-50:])
            time.sleep(0.5)
        assert local_superlinks(home.name), "flwr run should leave its local SuperLink running"
    finally:
        leftovers = sup.stop_all()
        shutil.rmtree(home, ignore_errors=True)
    assert leftovers == [] and local_superlinks(home.name) == []
    assert link not in listening_ports()
    summary = read_summary(tmp_path / "native")
    assert summary is not None and summary["rounds_completed"] == 1, "\n".join(lines[-50:])
    assert any("round   1/1" in line for line in lines)


def test_ray_engine_refuses_without_a_source_checkout(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    import dpfl.simulations.engines.ray_engine as ray_engine
    from dpfl.simulations.deploy.supervisor import LaunchError

    def no_checkout() -> Path:
        raise LaunchError("not a dpfl source checkout")

    monkeypatch.setattr(ray_engine, "repo_root", no_checkout)
    with pytest.raises(ray_engine.RayEngineError, match="source checkout"):
        ray_engine.simulate_on_ray(resolve({**BASE}), tmp_path / "x")
