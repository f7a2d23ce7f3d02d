"""A data owner's own model and records, end to end: the examples, by-column sites, one owner per file,
the Python API from a plain script, and bad plug-ins refused with one line and exit 2 before training.

Every run here uses dpfl's default worker processes (the user's module must reach them) and its ledgers'
epsilon is recomputed with dp-accounting directly (tests/independent_accounting.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from independent_accounting import independent_pld_epsilon

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MAJORITY = 0.605  # the test set's majority class share in the tabular example


def _run(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _dpfl(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "dpfl.simulations.cli.main", *args], cwd)


def _ledgers_reproduced(run_dir: Path) -> dict[str, float]:
    """Every server ledger's last epsilon equals dp-accounting's PLD over its rows; returns them."""
    delta = json.loads((run_dir / "config.json").read_text())["resolved"]["delta"]
    out = {}
    for ledger in sorted((run_dir / "ledgers").glob("*.jsonl")):
        rows = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
        assert rows, ledger
        assert rows[-1]["epsilon"] == pytest.approx(independent_pld_epsilon(rows, delta), rel=2e-3)
        out[ledger.stem] = rows[-1]["epsilon"]
    return out


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("tabular")
    shutil.copytree(EXAMPLES / "tabular_sites", where, dirs_exist_ok=True)
    proc = _run([sys.executable, "make_data.py"], where)
    assert proc.returncode == 0, proc.stderr
    return where


def test_tabular_example_federates_one_client_per_site_with_workers(sites: Path) -> None:
    proc = _dpfl(["simulate", "--config", "federation.toml", "--run-name", "sites"], sites)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = sites / "runs" / "sites"
    epsilons = _ledgers_reproduced(run)
    assert sorted(epsilons) == ["site-city-general", "site-riverside", "site-st-marys"]
    assert max(epsilons.values()) <= 3.0 + 1e-9
    config = json.loads((run / "config.json").read_text())
    assert config["num-clients"] == 3 and config["workers"] == 0  # 0: min(cores, clients) worker processes
    inputs = config["inputs"]
    assert inputs["model"]["spec"] == "model:TabularNet" and inputs["model"]["parameters"] == 30 * 32 + 32 + 66
    train = inputs["dataset"]["train"]
    assert train["path"].endswith("hospitals.csv") and len(train["sha256"]) == 64
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_accuracy"] > MAJORITY + 0.05, summary  # it learns beyond the majority class
    report = (run / "report" / "report.md").read_text()
    assert "`model:TabularNet`" in report and "sha256" in report
    assert _dpfl(["report", str(run)], sites).returncode == 0  # the report's own cross-checks pass


def test_each_owner_trains_on_its_own_file(sites: Path) -> None:
    common = ["simulate", "--config", "federation.toml", "--data-path", "", "--client-data", "data/sites",
              "--num-server-rounds", "3"]
    refused = _dpfl([*common, "--run-name", "no-n"], sites)
    assert refused.returncode == 2 and "declared-records" in refused.stderr + refused.stdout
    proc = _dpfl([*common, "--declared-records", "150", "--run-name", "own"], sites)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = sites / "runs" / "own"
    assert sorted(_ledgers_reproduced(run)) == ["city-general", "riverside", "st-marys"]
    rows = [json.loads(x) for x in (run / "ledgers" / "riverside.jsonl").read_text().splitlines()]
    assert {r["declared_records"] for r in rows} == {150}  # the declaration, not the true count 91
    assert json.loads((run / "config.json").read_text())["inputs"]["dataset"]["train"].startswith("held by")


@pytest.mark.parametrize("example,script", [("image_folder", "make_images.py"), ("hf_disk", "make_dataset.py")])
def test_image_folder_and_hf_disk_examples_train(example: str, script: str, tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES / example, tmp_path, dirs_exist_ok=True)
    assert _run([sys.executable, script], tmp_path).returncode == 0
    proc = _dpfl(["simulate", "--config", "federation.toml", "--num-server-rounds", "3", "--run-name", "ex"],
                 tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(_ledgers_reproduced(tmp_path / "runs" / "ex")) >= 3
    assert json.loads((tmp_path / "runs" / "ex" / "summary.json").read_text())["final_accuracy"] > 0.3  # 10 classes


def test_python_api_from_a_plain_script_without_main_guard(sites: Path) -> None:
    script = textwrap.dedent("""
        import dpfl
        from torch import nn
        from model import TabularNet

        class HereNet(nn.Sequential):  # defined in __main__: trains in this process
            def __init__(self, input_shape, num_classes):
                super().__init__(nn.Linear(input_shape[0], 8), nn.ReLU(), nn.Linear(8, num_classes))

        common = dict(data="data/hospitals.csv", label_column="target", data_schema="data/schema.toml",
                      test_data_path="data/test.csv", partition="by-column", client_column="site",
                      num_server_rounds=2, batch_size=256, learning_rate=2.0, run_dir="runs", progress=False)
        a = dpfl.simulate(model=TabularNet, run_name="api-module", **common)
        b = dpfl.simulate(model=HereNet, run_name="api-main", **common)
        print("RESULT", a.config["workers"], b.config["workers"], len(a.history), a.epsilon,
              type(a.model).__name__, type(b.model).__name__, a.run_dir.name)
        try:
            dpfl.simulate(model=HereNet, run_name="api-refused", workers=2, **common)
        except Exception as exc:
            print("REFUSED", type(exc).__name__, exc)
    """)
    (sites / "api_script.py").write_text(script)
    proc = _run([sys.executable, "api_script.py"], sites)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT")).split()
    assert result[1:3] == ["0", "1"] and result[3] == "2" and result[5:] == ["TabularNet", "HereNet", "api-module"]
    epsilons = _ledgers_reproduced(sites / "runs" / "api-module")
    assert float(result[4]) == pytest.approx(max(epsilons.values()))
    refused = next(line for line in proc.stdout.splitlines() if line.startswith("REFUSED"))
    assert "ConfigError" in refused and "move it into a module" in refused
    assert not (sites / "runs" / "api-refused").exists()
    assert proc.stderr.count("round   1/2") == 2  # each line once per run: two runs logged, none duplicated


BAD_MODULE = """
from torch import nn
import torch

def not_a_module(input_shape, num_classes):
    return 42

class WithBatchNorm(nn.Sequential):
    def __init__(self, input_shape, num_classes):
        super().__init__(nn.Linear(input_shape[0], 8), nn.BatchNorm1d(8), nn.Linear(8, num_classes))
"""


def _bad_inputs(where: Path) -> dict[str, tuple[list[str], str]]:
    (where / "badmodels.py").write_text(BAD_MODULE)
    (where / "broken.py").write_text("raise RuntimeError('oops at import')\n")
    (where / "text.csv").write_text("a,b,target\n1,x,0\n2,y,1\n3,z,0\n4,w,1\n")
    (where / "labels.csv").write_text("a,b,target\n" + "".join(f"{k},{k % 3},{k % 3}\n" for k in range(30)))
    (where / "owners").mkdir(exist_ok=True)
    (where / "owners" / "empty.csv").write_text("a,b,target\n")
    (where / "owners" / "full.csv").write_text("a,b,target\n" + "".join(f"{k},1,{k % 2}\n" for k in range(20)))
    csv = ["--dataset", "csv", "--num-classes", "2", "--num-clients", "2"]
    return {
        "module that does not import": ([*csv, "--data-path", "labels.csv", "--label-column", "target",
                                         "--num-classes", "3", "--model", "broken:Net"], "broken"),
        "factory returns the wrong type": ([*csv, "--data-path", "labels.csv", "--num-classes", "3",
                                            "--label-column", "target", "--model", "badmodels:not_a_module"],
                                           "not_a_module"),
        "model Opacus cannot train": ([*csv, "--data-path", "labels.csv", "--num-classes", "3", "--label-column",
                                       "target", "--model", "badmodels:WithBatchNorm"], "--fix-model"),
        "missing label column": ([*csv, "--data-path", "labels.csv", "--label-column", "y", "--model", "mlp"],
                                 "'y'"),
        "non-numeric features": ([*csv, "--data-path", "text.csv", "--label-column", "target", "--feature-columns",
                                  "a,b", "--model", "mlp"], "'b'"),
        "label outside the classes": ([*csv, "--data-path", "labels.csv", "--label-column", "target",
                                       "--model", "mlp"], "outside the classes"),
        "an empty client": (["--dataset", "csv", "--num-classes", "2", "--client-data", "owners",
                             "--input-shape", "2", "--declared-records", "20", "--label-column", "target",
                             "--model", "mlp"], "empty"),
    }


def test_bad_plugins_and_data_are_one_line_exit_2_before_training(tmp_path: Path) -> None:
    failures = []
    for name, (args, needle) in _bad_inputs(tmp_path).items():
        proc = _dpfl(["simulate", "--num-server-rounds", "1", "--run-name", "bad", *args], tmp_path)
        out = proc.stdout + proc.stderr
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        if proc.returncode != 2 or "Traceback" in out or len(errors) != 1 or needle not in errors[0]:
            failures.append(f"{name}: rc={proc.returncode} {out[-600:]}")
    assert not failures, "\n".join(failures)
    assert not list(tmp_path.glob("runs/*/ledgers/*"))


def test_client_dataset_flag_names_the_owners_format(tmp_path: Path) -> None:
    import pandas as pd

    from dpfl.simulations import apps
    from dpfl.simulations.config import resolve

    frame = pd.DataFrame({"a": [float(k) for k in range(20)], "target": [k % 2 for k in range(20)]})
    frame.to_parquet(tmp_path / "mine.parquet")
    cfg = resolve({"dataset": "csv", "label-column": "target", "num-classes": 2, "model": "mlp",
                   "declared-records": 20, "input-shape": "1"})
    node = {"own-data": str(tmp_path / "mine.parquet"), "own-data-kind": "parquet", "client-id": "mine"}
    setup = apps.own_data_setup(cfg, node, "mine")
    assert setup.train_y.shape[0] == 20 and setup.declared_records == 20 and setup.input_shape == (1,)
    base = ["client", "--server", "127.0.0.1:9", "--insecure", "--client-id", "mine"]
    for extra in (["--dataset", "xml", "--data-path", str(tmp_path / "mine.parquet")],
                  ["--dataset", "csv", "--partition-id", "0", "--num-partitions", "2"]):
        proc = _dpfl([*base, *extra], tmp_path)
        assert proc.returncode == 2 and "--dataset" in proc.stderr + proc.stdout, proc.stderr
